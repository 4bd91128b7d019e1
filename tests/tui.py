"""Helpers for driving the Textual app in tests."""

from __future__ import annotations

import asyncio
import time

from textual.widgets import DataTable, Static


async def settle(pilot, rounds: int = 4) -> None:
    """Wait until the app's workers (and the workers they start) are done and the UI caught up."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def opened(pilot, timeout: float = 300) -> None:
    """Wait until the workbench has opened its target (or failed to) and the UI caught up. The
    load worker starts after the first refresh, so waiting for workers alone can return before
    it has started. Then until every table has measured its new rows (DataTable sizes its columns
    when idle: a snapshot taken before, on a busy machine, had the layer names cut to the header's
    width)."""
    app = pilot.app
    await wait_for(pilot, lambda: app.state.base is not None or app.error is not None, timeout)
    await settle(pilot)
    await wait_for(pilot, lambda: not any(table._require_update_dimensions or table._updated_cells
                                          for table in app.screen.query(DataTable)), timeout)


async def wait_for(pilot, condition, timeout: float) -> bool:
    """Let the app run until `condition()` holds (True) or `timeout` seconds passed (its last value):
    for what the app does on its own clock (polls, workers), however slow the machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await pilot.pause(0.1)
    return condition()


def text_of(app, selector: str) -> str:
    """The rendered text of a Static on the current screen."""
    return str(app.screen.query_one(selector, Static).render())


def drive(app, script, first_key: str | None = None, size=(80, 24)) -> None:
    """Run `app` headless at `size`; once it has opened the model (and, with `first_key`, once
    that key's screen has settled too), await `script(pilot)`."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await opened(pilot)
            if first_key:
                await pilot.press(first_key)
                await settle(pilot)
            await script(pilot)
    asyncio.run(main())
