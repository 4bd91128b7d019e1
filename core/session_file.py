"""Saving a session over a file a person may have written: only the keys that differ from the
defaults are added, and an existing file is edited in place (tomlkit), so its comments, key
order and relative paths stay as they were."""

from __future__ import annotations

from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table

from core.atomic import atomic_path
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage, reference_stage
from core.session import Session

MARK = "# written by HOS Workbench"  # first line of the files the workbench creates


def _minimal(session: Session) -> dict:
    """The session as plain data with only the keys that differ from their defaults (a stage's
    defaults are its mode's reference values; `version` and a stage's `mode` always stay)."""
    out = session.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    out = {"version": session.version, **out}
    for key in ("prune", "decompose"):  # a section present with all defaults still means "do this step"
        if getattr(session, key) is not None:
            out.setdefault(key, {})
    for key, stages in (("finetune", session.finetune), ("train", [session.train] if session.train else [])):
        minimal = [_stage(s, key == "finetune" and session.decompose is not None) for s in stages]
        if key == "finetune":
            if minimal:
                out[key] = minimal
            else:
                out.pop(key, None)
        elif minimal:
            out[key] = minimal[0]
    return out


def _stage(stage: FinetuneStage, decomposed: bool = False) -> dict:
    """The stage's keys that differ from its defaults (a `ce` stage after a decomposition has
    its own, core.finetune.settings.AFTER_DECOMPOSITION)."""
    ref = reference_stage(stage.mode, decomposed).model_dump(mode="json", exclude_none=True)
    full = stage.model_dump(mode="json", exclude_none=True)
    return {"mode": stage.mode, **{k: v for k, v in full.items() if k != "mode" and v != ref.get(k)}}


def _full(session: Session) -> dict:
    return session.model_dump(mode="json", exclude_none=True)


def _same_path(old, new, base: Path) -> bool:
    """A path as the user wrote it (relative to the file) naming the same file as `new`."""
    if not isinstance(old, str) or not isinstance(new, str):
        return False
    kind, sep, path = old.rpartition(":")
    new_kind, new_sep, new_path = new.rpartition(":")
    if (kind, sep) != (new_kind, new_sep) or old in ("demo", "digits"):
        return old == new
    return (base / Path(path).expanduser()).resolve() == Path(new_path).resolve()


def _merge(table, full: dict, minimal: dict, base: Path) -> None:
    """Edit `table` in place to hold `full`: keys already there are updated (or removed when
    gone), new keys are added only when they differ from the default (are in `minimal`)."""
    for key in list(table.keys()):
        if key not in full:
            del table[key]
    for key, value in full.items():
        if key in table:
            old = table[key]
            if isinstance(value, dict) and isinstance(old, (Table, tomlkit.items.InlineTable)):
                _merge(old, value, minimal.get(key, {}), base)
            elif isinstance(old, AoT) and isinstance(value, list) and len(old) == len(value):
                for item, v, m in zip(old, value, minimal.get(key, [{}] * len(value))):
                    _merge(item, v, m, base)
            elif key in ("checkpoint", "spec") and _same_path(old.unwrap() if hasattr(old, "unwrap") else old,
                                                             value, base):
                continue
            elif (old.unwrap() if hasattr(old, "unwrap") else old) != value:
                table[key] = minimal.get(key, value)
        elif key in minimal:
            table[key] = minimal[key]


def session_text(session: Session, original: str | None = None, base: Path = Path(".")) -> str:
    """TOML for `session`: a new document with the non-default keys, or `original` (a file's
    text, paths relative to `base`) edited to match."""
    if original is None:
        doc = tomlkit.document()
        doc.add(tomlkit.comment(MARK.removeprefix("# ")))
        for key, value in _minimal(session).items():
            doc[key] = value
        return tomlkit.dumps(doc)
    try:
        doc = tomlkit.parse(original)
    except tomlkit.exceptions.ParseError as exc:
        raise WorkbenchError(f"cannot keep the file's layout: not valid TOML: {exc}") from None
    _merge(doc, _full(session), _minimal(session), base)
    return tomlkit.dumps(doc)


def written_by_workbench(path: Path) -> bool:
    """Whether `path` is missing or starts with the workbench's mark (safe to write without asking)."""
    try:
        with open(path) as f:
            return f.readline().strip() == MARK
    except FileNotFoundError:
        return True
    except OSError:
        return False


def save_session_file(session: Session, path: str | Path) -> None:
    """Write `session` to `path` atomically, editing the file in place when it exists."""
    path = Path(path)
    try:
        original = path.read_text() if path.is_file() else None
    except OSError as exc:
        raise WorkbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    text = session_text(session, original, path.resolve().parent)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise WorkbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
