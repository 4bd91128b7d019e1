"""The fine-tune stages as table cells, and one cell's typed text as a validated stage."""

from __future__ import annotations

from pydantic import ValidationError
from rich.text import Text

from core.errors import WorkbenchError
from core.finetune.settings import REFERENCE, FinetuneStage
from workbench.format import num

# (FinetuneStage field, column header, parser of the typed text)
COLUMNS = [("mode", "mode", str), ("epochs", "epochs", int), ("lr", "lr", float), ("milestones", "milestones", list),
           ("batch_size", "batch", int), ("mse_factor", "mse×", float), ("n_losses", "losses", int),
           ("decay", "decay", float)]
USED_BY = {"mse_factor": ("mse", "aux"), "n_losses": ("aux",), "decay": ("aux",)}


def default_stages() -> list[FinetuneStage]:
    """METHOD.md steps 3 and 4: auxiliary losses, then plain cross-entropy."""
    return [FinetuneStage(mode="aux"), FinetuneStage(mode="ce")]


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(map(str, err["loc"])) or "stage"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def edit_stage(stage: FinetuneStage, name: str, text: str) -> FinetuneStage:
    """The stage with one field set from typed text, validated as a whole stage. Changing the
    mode moves lr/epochs/milestones still at the old mode's reference values to the new one's."""
    kind = next(k for f, _, k in COLUMNS if f == name)
    text = text.strip()
    try:
        if kind is list:
            value = [int(p) for p in text.replace(",", " ").split()]
        elif kind is str:
            value = text.lower()
        else:
            value = kind(text)
    except ValueError:
        what = "whole numbers" if kind is list else "a whole number" if kind is int else "a number"
        raise WorkbenchError(f"{name}: '{text}' is not {what}") from None
    data = stage.model_dump(exclude_none=True)
    if name == "mode" and value != stage.mode and value in REFERENCE:
        for key, ref in REFERENCE[stage.mode].items():
            if data[key] == ref:
                del data[key]
        if value != "aux":
            data.pop("pivots", None), data.pop("pivot_modules", None)
    data[name] = value
    try:
        return FinetuneStage.model_validate(data)
    except ValidationError as exc:
        raise WorkbenchError(_one_line(exc)) from None


def stage_cells(stage: FinetuneStage) -> list:
    cells = []
    for name, _, _ in COLUMNS:
        value = getattr(stage, name)
        text = (" ".join(map(str, value)) or "-") if isinstance(value, list) else num(value) if isinstance(value, float) \
            else str(value)
        used = stage.mode in USED_BY.get(name, (stage.mode,))
        cells.append(Text(text, style="" if used else "dim"))
    return cells
