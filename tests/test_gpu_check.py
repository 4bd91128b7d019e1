"""bench/gpu_check.py runs end to end in its --quick CPU mode (CI has no GPU)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_quick_cpu_mode_reports_every_part(monkeypatch, capsys):
    """Run as `python bench/gpu_check.py --quick --device cpu` would, in this process."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--quick", "--device", "cpu"])
    runpy.run_path(str(SCRIPT), run_name="__main__")  # an exception fails the test, as exit 1 would
    out = capsys.readouterr().out
    for mode in ("ce", "mse", "aux"):
        assert re.search(rf"^\s+{mode}\s+fp32\s+[\d.]+ images/s", out, re.M)
        assert re.search(rf"^\s+{mode}\s+channels_last\s+[\d.]+ images/s", out, re.M)
    assert re.search(r"on the fly \(trainer\)\s+[\d.]+ images/s", out)
    assert re.search(r"seed's float64 host array\s+[\d.]+ images/s .* host arrays 640 B for 8 images", out)
    for model in ("baseline", "pruned", "decomposed", "A3"):
        assert re.search(rf"^\s+{model}\s+b1:\s+[\d.]+ \([\d.]+x.*b2:\s+[\d.]+", out, re.M), out
