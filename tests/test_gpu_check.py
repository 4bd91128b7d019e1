"""bench/gpu_check.py runs end to end in its --quick CPU mode (CI has no GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_quick_cpu_mode_reports_every_part():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu"], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for mode in ("ce", "mse", "aux"):
        assert re.search(rf"^\s+{mode}\s+fp32\s+[\d.]+ images/s", out, re.M)
        assert re.search(rf"^\s+{mode}\s+channels_last\s+[\d.]+ images/s", out, re.M)
    assert re.search(r"on the fly \(trainer\)\s+[\d.]+ images/s", out)
    assert re.search(r"seed's float64 host array\s+[\d.]+ images/s .* host arrays 640 B for 8 images", out)
    for model in ("baseline", "pruned", "decomposed", "A3"):
        assert re.search(rf"^\s+{model}\s+b1:\s+[\d.]+ \([\d.]+x.*b2:\s+[\d.]+", out, re.M), out
