"""The session file: every choice a user makes, as versioned TOML validated by pydantic.

A session names the model (and checkpoint), optionally the data, and the pruning choices
with per-layer overrides; `workbench replay` runs it headless and the TUI saves it. Paths
are stored as written and resolved relative to the session file's folder.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal, Optional, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.atomic import atomic_path
from core.data_spec import split_spec
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage, step4_after_decomposition
from core.models.names import check_model_name, is_factory
from core.prune import METRICS
from core.target import Target, parse_input_size

VERSION = 1
MAX_BYTES = 1 << 20  # a session is a few KB of TOML


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

    @field_validator("name")
    @classmethod
    def _known(cls, name: Optional[str]) -> Optional[str]:
        if name is not None:
            try:
                check_model_name(name)
            except WorkbenchError as exc:
                raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _named(self):
        if self.name is None and self.checkpoint is None:
            raise ValueError("give name or checkpoint")
        return self


class NormalizeValues(Section):
    """Explicit per-channel normalisation: x = (pixel / 255 - mean) / std."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _paired(self):
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError("give one mean and one std per channel")
        if any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        return self


class DataSection(Section):
    spec: str
    # unset: CIFAR the reference loader's constants ("reference"), ImageFolder ImageNet's, the rest "computed"
    normalize: Optional[Union[Literal["reference", "computed"], NormalizeValues]] = None
    split: Literal["seeded", "reference"] = "seeded"   # "reference": numpy seed 1, first 10% held out

    def options(self) -> tuple:
        """(normalize, split) as core.data.load_data takes them."""
        n = self.normalize
        return (tuple(n.mean), tuple(n.std)) if isinstance(n, NormalizeValues) else n, self.split


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
    """Step 1 of METHOD.md. Unset constants take the reference script's row for the model on the
    session's data set (core.prune.strategies.REFERENCE_ROWS); without one Tmin/Tmax are the
    network's range of T, coef and the P2/P3 smoothing the family's."""

    strategy: Literal["P1", "P2", "P3", "P4", "P5", "manual", "torch-pruning"] = "P1"
    metric: Literal[METRICS] = "k34"  # type: ignore[valid-type]
    tmin: Optional[float] = None
    tmax: Optional[float] = None
    coef: Optional[float] = Field(None, gt=0)
    p2_divisor: Optional[float] = Field(None, gt=0)    # P2: T = 1 - log10(jb) / p2_divisor
    p2_factor: Optional[float] = Field(None, gt=0)     # P2: eq. 9 takes p2_factor * T
    p3_scale: Optional[float] = Field(None, gt=0)      # P3: T = log10(p3_scale |k3 k4|) / p3_divisor
    p3_divisor: Optional[float] = Field(None, gt=0)
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
    importance: Optional[Literal["magnitude", "group-norm"]] = None  # torch-pruning: its importance (group-norm)
    flops: Optional[float] = Field(None, gt=0, lt=1)   # torch-pruning: FLOPs to keep, a fraction of the baseline's
    flops_of: Optional[str] = None                     # torch-pruning: or those another session's [prune] keeps

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy == "torch-pruning" and ((self.flops is None) == (self.flops_of is None) or self.layers):
            raise ValueError("strategy \"torch-pruning\" needs one of flops (the fraction of the baseline FLOPs to "
                             "keep) or flops_of (a session file whose pruning it matches), and no per-layer overrides")
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
    skip_slower: bool = False                          # leave whole each layer whose decomposed form is not faster


class MeasureSection(Section):
    """Where latency is measured (core/measure.py): the device the model will run on and the batch sizes."""

    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")   # cpu | cuda | cuda:N
    batch_sizes: list[int] = Field([1], min_length=1)
    threads: Optional[int] = Field(None, ge=1)                  # torch intra-op threads (default: the free cores)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if min(sizes) < 1:
            raise ValueError("batch sizes must be positive, e.g. [1, 64]")
        return list(dict.fromkeys(sizes))


class TargetSection(Section):
    """A budget (core/budget.py): FLOPs or parameters as a fraction of the baseline; the method's free
    knob (P1-P3 coef, P4 percent, P5 stage-ratio scale, decomposition x) is solved to meet it."""

    flops: Optional[float] = Field(None, gt=0, lt=1)
    params: Optional[float] = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one(self):
        if (self.flops is None) == (self.params is None):
            raise ValueError("give one of flops or params (a fraction of the baseline, e.g. flops = 0.5)")
        return self


def measure_override(base: MeasureSection | None = None, device: str | None = None, batch_sizes: str | None = None,
                     threads: int | None = None) -> MeasureSection | None:
    """`base` (a session's [measure]) with the command line's --device, --batch-sizes ("1,64") and
    --threads put over it; None when there is neither. A bad value is one WorkbenchError line."""
    given = {k: v for k, v in (("device", device), ("batch_sizes", batch_sizes), ("threads", threads)) if v is not None}
    if not given:
        return base
    if batch_sizes is not None:
        try:
            given["batch_sizes"] = [int(v) for v in batch_sizes.split(",")]
        except ValueError:
            raise WorkbenchError(f"--batch-sizes {batch_sizes}: give positive integers separated by commas, "
                                 "e.g. 1,64") from None
    try:
        return MeasureSection.model_validate({**(base.model_dump(exclude_unset=True) if base else {}), **given})
    except ValidationError as exc:
        key = str(exc.errors()[0]["loc"][0])
        hint = {"device": "use cpu, cuda or cuda:N", "threads": "give a positive number of threads"}.get(
            key, "give positive integers separated by commas, e.g. 1,64")
        value = {"batch_sizes": batch_sizes}.get(key, given.get(key, (base.model_dump() if base else {}).get(key)))
        raise WorkbenchError(f"--{key.replace('_', '-')} {value}: {hint}") from None


class LogSection(Section):
    """Views of the training events beside metrics.jsonl (core/tracking.py)."""

    tensorboard: bool = False  # event files in the run directory (tensorboard --logdir runs/)
    csv: bool = False          # metrics.csv


class Session(Section):
    model_config = ConfigDict(serialize_by_alias=True)  # `budget` is [target] in TOML (`target()` is a method)

    version: Literal[1] = VERSION
    model: ModelSection
    data: Optional[DataSection] = None
    prune: Optional[PruneSection] = None
    decompose: Optional[DecomposeSection] = None
    finetune: list[FinetuneStage] = []                 # [[finetune]] stages, run in order
    train: Optional[FinetuneStage] = None              # train the baseline first when no checkpoint is given
    log: Optional[LogSection] = None                   # TensorBoard / CSV beside metrics.jsonl
    measure: Optional[MeasureSection] = None           # latency device and batch sizes (default: CPU, batch 1)
    budget: Optional[TargetSection] = Field(None, alias="target")  # [target]: a budget solved for the last step

    @model_validator(mode="before")
    @classmethod
    def _step4_after_decomposition(cls, data):
        """`ce` stages after a decomposition (A2/A3) default to METHOD.md's step 4 for decomposed models."""
        if isinstance(data, dict) and data.get("decompose") is not None and isinstance(data.get("finetune"), list):
            data = {**data, "finetune": [step4_after_decomposition(stage) for stage in data["finetune"]]}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.budget is not None and self.prune is None and self.decompose is None:
            raise ValueError("[target] needs a [prune] or [decompose] section whose knob it solves")
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
            update["model"] = m.model_copy(update={"checkpoint": _absolute(base, m.checkpoint, "model.checkpoint")})
        kind, path = split_spec(d.spec) if d else ("digits", "")
        if kind != "digits":
            prefix = f"{kind}:" if kind else ""
            update["data"] = d.model_copy(update={"spec": f"{prefix}{_absolute(base, path, 'data.spec')}"})
        if self.prune is not None and self.prune.flops_of:
            update["prune"] = self.prune.model_copy(
                update={"flops_of": _absolute(base, self.prune.flops_of, "prune.flops_of")})
        return self.model_copy(update=update)

    def require_trust(self, trust: bool) -> None:
        """Code the session names runs only with `trust` (the command line's --trust-pickle):
        `trust_pickle = true` only records that the checkpoint needs it, and a
        `module:function` factory is code too. One line when it is missing."""
        m = self.model
        needs = ("[model] trust_pickle = true (the checkpoint's pickled classes run their own code)"
                 if m.trust_pickle else f"[model] name = \"{m.name}\" (a model factory: its code runs)"
                 if runs_code(m.name, False) else None)
        if needs and not trust:
            raise WorkbenchError(f"the session asks to run code, {needs}: pass --trust-pickle if you trust it "
                                 "(a session file alone never runs code)")

    def target(self, trust: bool = False) -> Target:
        """What to open (resolve relative paths first, see `resolved`), running code only with
        `trust` (see `require_trust`)."""
        self.require_trust(trust)
        m = self.model
        checkpoint = Path(m.checkpoint) if m.checkpoint else None
        if checkpoint is not None and not checkpoint.is_file():
            raise WorkbenchError(f"model.checkpoint: {checkpoint} does not exist")
        return Target(m.name, checkpoint, m.num_classes, m.in_channels, m.weights, trust,
                      self.data.spec if self.data else None,
                      parse_input_size(m.input_size) if m.input_size else None,
                      *(self.data.options() if self.data else ()))


def runs_code(name: str | None, trust_pickle: bool) -> bool:
    """Whether opening this model runs code a file names: a pickled model's own classes
    (`trust_pickle`) or a `package.module:function` factory (timm: and hf: models are not)."""
    return trust_pickle or bool(name and is_factory(name) and not name.startswith(("timm:", "hf:")))


def _absolute(base: Path, path: str, key: str) -> str:
    try:
        return str((base / Path(path).expanduser()).resolve())
    except RuntimeError as exc:  # `~user/...` of a user this machine does not know
        raise WorkbenchError(f"{key}: cannot expand {path!r} ({exc}): write the full path") from None


def _not_finite(value, where: tuple = ()) -> tuple | None:
    """The key path of the first infinite or NaN number in parsed TOML, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _not_finite(item, (*where, key))
        if found is not None:
            return found
    return None


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
    except RecursionError:
        raise WorkbenchError(f"{source}: not a session: its arrays or tables nest too deeply") from None
    bad = _not_finite(raw)
    if bad is not None:
        raise WorkbenchError(f"{source}: {'.'.join(map(str, bad))}: numbers must be finite (got inf or nan)")
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
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise WorkbenchError(f"cannot read session {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise WorkbenchError(f"{path} is not a session file: over {MAX_BYTES >> 20} MB (a session is a few KB of TOML)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkbenchError(f"{path} is not a session file: not UTF-8 text (save it as UTF-8 TOML)") from None
    return parse_session(text, str(path))


def dump_session(session: Session) -> str:
    return tomli_w.dumps(session.model_dump(mode="json", exclude_none=True, exclude_defaults=False))


def save_session(session: Session, path: str | Path) -> None:
    """Write the session as TOML, atomically."""
    text = dump_session(session)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
