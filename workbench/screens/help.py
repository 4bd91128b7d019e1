"""The help panel (? / F1): the keys of the screen below it and what its columns mean."""

from __future__ import annotations

from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static


def key_lines(screen: Screen) -> list[str]:
    """'key  what it does' for the bindings of `screen` and of the app, one line per action; the
    focused widget's own keys (cursor movement) are summed up on one last line."""
    app = screen.app
    active = screen.active_bindings
    seen, lines, widget_keys = set(), [], []
    generic = {b.action for b in Screen.BINDINGS if isinstance(b, Binding)}  # tab, shift+tab, copy: last
    for order, common in ((screen, False), (app, False), (screen, True)):
        for node, binding, enabled, _tooltip in active.values():
            if node is not order or (binding.action in generic) != common or not binding.description \
                    or binding.system or binding.action in seen:
                continue
            seen.add(binding.action)
            keys = [k for k, b in active.items() if b.binding.action == binding.action and b.node is node]
            shown = " ".join(app.get_key_display(Binding(k, binding.action)) for k in keys)
            lines.append(f"[b]{escape(shown):>11}[/]  {escape(binding.description)}"
                         + ("" if enabled else " [dim](not now)[/]"))
    for key, (node, binding, _enabled, _tooltip) in active.items():
        if node is not screen and node is not app and binding.description and not binding.system:
            widget_keys.append(app.get_key_display(Binding(key, binding.action)))
    if widget_keys:
        lines.append(f"[dim]in the focused {type(screen.focused).__name__ if screen.focused else 'widget'}: "
                     f"{escape(' '.join(widget_keys))}[/]")
    return lines


class HelpScreen(ModalScreen[None]):
    """Over the current screen; ?, F1 or esc close it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,f1,escape", "close", "Close help", id="help.close"),
    ]

    def __init__(self, under: Screen) -> None:
        super().__init__()
        self.text = "\n".join(["[b u]keys[/]", *key_lines(under)])
        columns = getattr(under, "HELP", "")
        if columns:
            self.text += "\n\n[b u]columns[/]\n" + columns
        self.text += "\n\n[dim]ctrl+p: every command · ? / F1 / esc closes this help[/]"

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-panel"):
            yield Static(self.text, id="help-text")

    def action_close(self) -> None:
        self.dismiss()
