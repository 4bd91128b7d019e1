"""The session file: every choice a user makes, as versioned TOML validated by pydantic.

A session names the model (and checkpoint), optionally the data, and the pruning choices
with per-layer overrides; `workbench replay` runs it headless and the TUI saves it. Paths
are stored as written and resolved relative to the session file's folder. Each step's table
is its domain's (core.prune.settings, core.decompose.settings, core.finetune.settings);
the session composes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional, Union

import tomli_w
import tomllib
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.atomic import atomic_path
from core.data.spec import split_spec
from core.decompose.settings import DecomposeSection, LayerRanks
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage, step4_after_decomposition
from core.models.names import check_model_name, is_factory
from core.prune.settings import LayerChoice, PruneSection
from core.section import Section
from core.target import Target, parse_input_size

__all__ = ["DataSection", "DecomposeSection", "LayerChoice", "LayerRanks", "LogSection", "MeasureSection",
           "ModelSection", "PruneSection", "Section", "Session", "TargetSection", "dump_session", "first_error",
           "load_session", "measure_override", "parse_session", "runs_code", "save_session"]

VERSION = 1
MAX_BYTES = 1 << 20  # a session is a few KB of TOML


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
    """A budget (core/budget.py): FLOPs, parameters or latency (at [measure]'s device and first batch
    size) as a fraction of the baseline; the method's free knob (P1-P3 coef, P4 percent, P5
    stage-ratio scale, decomposition x) is solved to meet it."""

    flops: Optional[float] = None
    params: Optional[float] = None
    latency: Optional[float] = None

    @field_validator("flops", "params", "latency", mode="before")
    @classmethod
    def _fraction(cls, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < 1):
            raise ValueError("give a fraction of the baseline between 0 and 1, e.g. 0.6")
        return None if value is None else float(value)

    @model_validator(mode="after")
    def _one(self):
        if sum(v is not None for v in (self.flops, self.params, self.latency)) != 1:
            raise ValueError("give one of flops, params or latency (a fraction of the baseline, e.g. flops = 0.5)")
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
