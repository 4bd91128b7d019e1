"""Live line plots (plotext via textual-plotext) for a run that keeps producing points.

ARCHITECTURE.md, "Live plots": the buffers are bounded (a deque per series), the points are
decimated to the plot's width when drawn, and the plot is redrawn at most a few times a
second; drawing happens in `render`, which Textual only calls while the widget is shown."""

from __future__ import annotations

import math
from collections import deque

from textual_plotext import PlotextPlot

MAXLEN = 2000        # points kept per series
REDRAW_S = 0.3       # at most ~3 redraws a second


def decimate(xs: list[float], ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """At most `n` points: consecutive points averaged in `n` equal buckets (x and y alike)."""
    if n <= 0:
        return [], []
    if len(xs) <= n:
        return list(xs), list(ys)
    out_x, out_y = [], []
    for b in range(n):
        lo, hi = b * len(xs) // n, (b + 1) * len(xs) // n
        if hi > lo:
            out_x.append(sum(xs[lo:hi]) / (hi - lo))
            out_y.append(sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


class SeriesPlot(PlotextPlot):
    """Named series of (x, y) points, one line each; `add` is cheap, drawing is throttled."""

    def __init__(self, title: str = "", maxlen: int = MAXLEN, ylabel: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title, self.ylabel, self.maxlen = title, ylabel, maxlen
        self.series: dict[str, deque[tuple[float, float]]] = {}
        self.drawn: dict[str, tuple[list[float], list[float]]] = {}  # what the last render drew
        self._dirty = False

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(REDRAW_S, self._redraw_if_dirty)

    def add(self, name: str, x: float, y: float | None) -> None:
        """One point; a missing or non-finite y (a diverged loss) is skipped."""
        if y is None or not math.isfinite(y):
            return
        self.series.setdefault(name, deque(maxlen=self.maxlen)).append((float(x), float(y)))
        self._dirty = True

    def clear(self) -> None:
        self.series.clear()
        self.drawn = {}
        self._dirty = True

    @property
    def points(self) -> int:
        """Points held over all series."""
        return sum(len(s) for s in self.series.values())

    def decimated(self, width: int) -> dict[str, tuple[list[float], list[float]]]:
        """Each series cut down to at most `width` points (one per column)."""
        out = {}
        for name, points in self.series.items():
            xs, ys = zip(*points) if points else ((), ())
            out[name] = decimate(list(xs), list(ys), max(2, width))
        return out

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self._dirty = False
            self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.title(self.title)
        plt.ylabel(self.ylabel)
        self.drawn = self.decimated(self.size.width)
        for name, (xs, ys) in self.drawn.items():
            if xs:
                plt.plot(xs, ys, label=name if len(self.drawn) > 1 else None, marker="braille")
        return super().render()
