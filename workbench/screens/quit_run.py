"""The question asked when quitting while the followed run is alive."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Static


class QuitRunScreen(ModalScreen[str]):
    """Asked when quitting while the followed run is alive: leave it, stop it, or cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "choose('leave')", "Leave it running", id="quit.leave"),
        Binding("s", "choose('stop')", "Stop it, quit", id="quit.stop"),
        Binding("c,escape", "choose('cancel')", "Back", id="quit.cancel"),
    ]

    def __init__(self, name: str, folder: str | None = None) -> None:
        super().__init__()
        self.run_name, self.folder = name, folder or name

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            yield Static(f"The run [b]{self.run_name}[/] is still going.\n"
                         "[b]l[/] leave it running: it goes on without the workbench; "
                         f"`workbench open {self.folder}` follows it again\n"
                         "[b]s[/] stop it (it checkpoints; resume later), then quit\n"
                         "[b]c[/] / [b]esc[/] back to the workbench (the run goes on)")
            with Horizontal(id="quit-buttons"):
                yield Button("Leave (l)", id="leave", variant="primary", compact=True)
                yield Button("Stop (s)", id="stop", variant="warning", compact=True)
                yield Button("Back (c)", id="cancel", compact=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)
