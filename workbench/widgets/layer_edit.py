"""A one-line editor for a table row's value: opens under the table, posts `Edited` on
enter, closes on escape and hands the focus back to the table."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Input


class LayerEditor(Input):
    BINDINGS = [Binding("escape", "close", "Cancel", show=False)]

    @dataclass
    class Edited(Message):
        layer: str
        text: str

    def __init__(self, **kwargs) -> None:
        super().__init__(compact=True, **kwargs)
        self.editing = ""
        self.display = False

    def open(self, layer: str, hint: str, value: str) -> None:
        self.editing, self.placeholder, self.value = layer, hint, value
        self.display = True
        self.focus()

    def action_close(self) -> None:
        self.display = False
        self.screen.query_one(DataTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Edited(self.editing, event.value))
