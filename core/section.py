"""The base of every table of a session file (core.session composes them; each domain owns
its own: core.prune.settings, core.decompose.settings, core.finetune.settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys and wrong types are errors, not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)
