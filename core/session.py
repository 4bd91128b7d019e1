"""The session file: every choice a user makes, as versioned TOML validated by pydantic.

A session names the model (and checkpoint), optionally the data, and the pruning choices
with per-layer overrides; `workbench replay` runs it headless and the TUI saves it. Paths
are stored as written and resolved relative to the session file's folder.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, Optional

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.atomic import atomic_path
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage
from core.overview import Target, parse_input_size
from core.prune.scores import METRICS

VERSION = 1


class Section(BaseModel):
    """Unknown keys and wrong types are errors, not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(Section):
    name: Optional[str] = None
    checkpoint: Optional[str] = None
    num_classes: Optional[int] = Field(None, ge=1)
    in_channels: Optional[int] = Field(None, ge=1)
    weights: Optional[str] = None
    trust_pickle: bool = False
    input_size: Optional[str] = Field(None, pattern=r"^\d+x\d+x\d+$")

    @model_validator(mode="after")
    def _named(self):
        if self.name is None and self.checkpoint is None:
            raise ValueError("give name or checkpoint")
        return self


class DataSection(Section):
    spec: str


class LayerChoice(Section):
    """A per-layer override: a prune ratio or a keep count (not both)."""

    ratio: Optional[float] = Field(None, ge=0, lt=1)
    keep: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _one(self):
        if (self.ratio is None) == (self.keep is None):
            raise ValueError("give exactly one of ratio or keep")
        return self


class PruneSection(Section):
    """Step 1 of METHOD.md. Unset thresholds take the computed defaults (Tmin/Tmax from the
    network, coef per model family)."""

    strategy: Literal["P1", "P2", "P3", "P4", "P5", "manual"] = "P1"
    metric: Literal[METRICS] = "k34"  # type: ignore[valid-type]
    tmin: Optional[float] = None
    tmax: Optional[float] = None
    coef: Optional[float] = Field(None, gt=0)
    percent: float = Field(0.32, ge=0, lt=1)
    variant: Optional[str] = None
    stage_bounds: Optional[list[int]] = None
    stage_ratios: Optional[list[float]] = None
    skip: list[int] = []
    ignore: list[str] = []
    coupled: bool = False
    multiple_of: int = Field(1, ge=1)
    seed: int = 0
    layers: dict[str, LayerChoice] = {}

    @model_validator(mode="after")
    def _consistent(self):
        if self.tmin is not None and self.tmax is not None and self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be above tmin ({self.tmin})")
        if self.stage_ratios is not None:
            if any(not 0 <= r < 1 for r in self.stage_ratios):
                raise ValueError("stage_ratios must each be in [0, 1)")
            if len(self.stage_ratios) != len(self.stage_bounds or []) + 1:
                raise ValueError("stage_ratios needs one ratio per stage: len(stage_bounds) + 1")
        if self.strategy == "P5" and self.variant is None and self.stage_ratios is None:
            raise ValueError("P5 needs variant (A/B/C) or stage_bounds + stage_ratios")
        return self


class LayerRanks(Section):
    """Explicit ranks of one layer: (r_out, r_in) for Tucker-2, rank for CP3 and SVD."""

    r_out: Optional[int] = Field(None, ge=1)
    r_in: Optional[int] = Field(None, ge=1)
    rank: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _shape(self):
        if (self.r_out is None) != (self.r_in is None) or (self.rank is None) == (self.r_out is None):
            raise ValueError("give r_out and r_in (tucker2), or rank (cp3, linear SVD)")
        return self


class DecomposeSection(Section):
    """Step 2 of METHOD.md: which layers, which method, which ranks."""

    method: Literal["tucker2", "cp3"] = "tucker2"
    x: float = Field(1.71, gt=1)                       # compression factor per layer
    rank_rule: Literal["x", "vbmf"] = "x"              # ranks from X, or VBMF estimation
    layers: Optional[list[str]] = None                 # default: the architecture's usual layers
    exclude: list[str] = []
    linear: bool = False                               # also the Linear layers, by truncated SVD
    ranks: dict[str, LayerRanks] = {}                  # per-layer explicit ranks


class Session(Section):
    version: Literal[1] = VERSION
    model: ModelSection
    data: Optional[DataSection] = None
    prune: Optional[PruneSection] = None
    decompose: Optional[DecomposeSection] = None
    finetune: list[FinetuneStage] = []                 # [[finetune]] stages, run in order
    train: Optional[FinetuneStage] = None              # train the baseline first when no checkpoint is given

    @model_validator(mode="after")
    def _consistent(self):
        if self.train is not None and self.train.mode != "ce":
            raise ValueError("train.mode must be \"ce\" (the baseline is trained with cross-entropy)")
        needs = "[[finetune]]" if self.finetune else "[train]" if self.train is not None else None
        if needs and self.data is None:
            raise ValueError(f"{needs} needs a [data] section (the images to train on)")
        return self

    @classmethod
    def from_target(cls, target: Target, prune: PruneSection | None = None,
                    decompose: DecomposeSection | None = None,
                    finetune: list[FinetuneStage] | None = None) -> "Session":
        """A session opening `target` (absolute paths) with the given pruning choices."""
        model = ModelSection(
            name=target.model, checkpoint=str(Path(target.checkpoint).resolve()) if target.checkpoint else None,
            num_classes=target.num_classes, in_channels=target.in_channels, weights=target.weights,
            trust_pickle=target.trust_pickle,
            input_size="x".join(map(str, target.input_size)) if target.input_size else None)
        return cls(model=model, data=DataSection(spec=target.data) if target.data else None, prune=prune,
                   decompose=decompose, finetune=list(finetune or []))

    def resolved(self, base: Path) -> "Session":
        """The same session with the checkpoint and data paths made absolute against `base`
        (the session file's folder), so it can be copied anywhere."""
        m, d = self.model, self.data
        update = {}
        if m.checkpoint:
            update["model"] = m.model_copy(update={"checkpoint": str((base / Path(m.checkpoint).expanduser()).resolve())})
        if d and d.spec not in ("demo", "digits"):
            kind, sep, path = d.spec.rpartition(":")
            update["data"] = d.model_copy(update={"spec": f"{kind}{sep}{(base / Path(path).expanduser()).resolve()}"})
        return self.model_copy(update=update)

    def target(self) -> Target:
        """What to open (resolve relative paths first, see `resolved`)."""
        m = self.model
        checkpoint = Path(m.checkpoint) if m.checkpoint else None
        if checkpoint is not None and not checkpoint.is_file():
            raise WorkbenchError(f"model.checkpoint: {checkpoint} does not exist")
        return Target(m.name, checkpoint, m.num_classes, m.in_channels, m.weights, m.trust_pickle,
                      self.data.spec if self.data else None,
                      parse_input_size(m.input_size) if m.input_size else None)


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    more = len(exc.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def parse_session(text: str, source: str = "session") -> Session:
    """Validate TOML text; any problem is one WorkbenchError line naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WorkbenchError(f"{source}: not valid TOML: {exc}") from None
    if isinstance(raw.get("version"), int) and raw["version"] > VERSION:
        raise WorkbenchError(f"{source}: session version {raw['version']} is newer than this workbench "
                             f"reads ({VERSION}); upgrade hos-workbench")
    try:
        return Session.model_validate(raw)
    except ValidationError as exc:
        raise WorkbenchError(f"{source}: {first_error(exc)}") from None


def load_session(path: str | Path) -> Session:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkbenchError(f"cannot read session {path}: {exc.strerror or exc}") from None
    return parse_session(text, str(path))


def dump_session(session: Session) -> str:
    return tomli_w.dumps(session.model_dump(mode="json", exclude_none=True, exclude_defaults=False))


def save_session(session: Session, path: str | Path) -> None:
    """Write the session as TOML, atomically."""
    text = dump_session(session)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
