"""The ASCII histogram: every column accounted for, the curve drawn where it belongs."""

from __future__ import annotations

from workbench.widgets.histogram import fit_columns, render_histogram


def test_fit_columns_repeats_or_sums_bins():
    assert fit_columns([1, 2], 4) == [1, 1, 2, 2]
    merged = fit_columns([1, 2, 3, 4, 5, 6], 4)
    assert len(merged) == 4 and sum(merged) == 21


def test_bars_reach_their_height_and_curve_marks_its_row():
    rows = [r.plain for r in render_histogram([8, 4, 0], [0, 0, 8], width=3, height=4)]
    assert len(rows) == 4 and all(len(r) == 3 for r in rows)
    assert [r[0] for r in rows] == ["█"] * 4          # tallest bin fills the column
    assert [r[1] for r in rows] == [" ", " ", "█", "█"]  # half height
    assert rows[0][2] == "•"                          # normal curve at the peak, over an empty bin
