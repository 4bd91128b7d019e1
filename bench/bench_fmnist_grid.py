"""The Fashion-MNIST grid, timed together: every finished run's final model (results/fashion-mnist/
RUN/finetune-*.safetensors) and the baseline, measured interleaved in one loop
(core.measure.compare_latency) at batch 1 and 64, so the speed-ups come from one run on one
machine state rather than from each training run's own (often busy) measurement.

Params, FLOPs and test accuracy are read from each run's report.json (the accuracy was measured
once, at the end of its training). Prints a Markdown table; `--md FILE` also writes it.
Run: python bench/bench_fmnist_grid.py [--md results/fashion-mnist/grid.md]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.atomic import atomic_path  # noqa: E402
from core.measure import compare_latency  # noqa: E402
from core.models.checkpoint import load_model  # noqa: E402

RESULTS = ROOT / "results" / "fashion-mnist"
SHAPE = (1, 28, 28)


def runs() -> list[tuple[str, dict, Path]]:
    """(name, final step of report.json, final model file) of every finished grid run."""
    found = []
    for report in sorted(RESULTS.glob("*/report.json")):
        folder = report.parent
        models = sorted(folder.glob("finetune-*.safetensors"))
        if folder.name == "baseline" or not models:
            continue
        found.append((folder.name, json.loads(report.read_text())["steps"][-1], models[-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", type=Path, help="also write the table to this file")
    parser.add_argument("--batch-sizes", default="1,64")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    batches = tuple(int(b) for b in args.batch_sizes.split(","))

    base_step = json.loads((RESULTS / "baseline" / "report.json").read_text())["steps"][-1]
    rows = [("baseline", base_step, RESULTS / "baseline.safetensors"), *runs()]
    models = {name: load_model(checkpoint=path).model for name, _, path in rows}
    times = compare_latency(models, SHAPE, batches)

    base = rows[0][1]
    heads = ["run", "params", "FLOPs", "test acc", "Δ pts", "FLOPs ÷"]
    heads += [f"ms b{b}" for b in batches] + [f"speed-up b{b}" for b in batches]
    lines = ["| " + " | ".join(heads) + " |", "|---" + "|---:" * (len(heads) - 1) + "|"]
    for name, step, _ in rows:
        acc = step.get("test_acc", step.get("accuracy"))
        cells = [name, f"{step['params']:,}", f"{step['flops'] / 1e6:.2f}M", f"{acc:.2%}",
                 f"{(acc - base.get('test_acc', base.get('accuracy'))) * 100:+.2f}",
                 f"{base['flops'] / step['flops']:.2f}x"]
        cells += [f"{lat.median_ms:.3f}" for lat in times[name]]
        cells += [f"{b.median_ms / lat.median_ms:.2f}x" for b, lat in zip(times["baseline"], times[name], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    noisy = [f"{n} b{lat.batch} ({lat.spread:.0%})" for n, lats in times.items() for lat in lats if lat.noisy]
    threads = torch.get_num_threads()
    lines += ["", f"Latency: CPU, {threads} torch thread(s), medians of 15 interleaved rounds"
              + (f"; noisy (IQR over 10% of the median): {', '.join(noisy)}" if noisy else "; every spread under 10%.")]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.md:
        with atomic_path(args.md) as tmp:
            tmp.write_text(table)


if __name__ == "__main__":
    main()
