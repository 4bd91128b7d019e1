"""Helpers for driving the Textual app in tests."""

from __future__ import annotations

from textual.widgets import Static


async def settle(pilot, rounds: int = 4) -> None:
    """Wait until the app's workers (and the workers they start) are done and the UI caught up."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def text_of(app, selector: str) -> str:
    """The rendered text of a Static on the current screen."""
    return str(app.screen.query_one(selector, Static).render())
