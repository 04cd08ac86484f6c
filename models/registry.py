"""Model registry: `build_model(name, task, modalities, config)`; names are saved in checkpoints."""
from __future__ import annotations

import dataclasses
from typing import Any

from mer_pipe.common.errors import ConfigError
from mer_pipe.common.registry import Registry

from .batch import MODALITIES, TaskInfo

MODELS: Registry = Registry("model")


def make_config(cls: type, values: dict[str, Any] | None, owner: str):
    """Build a frozen config dataclass, rejecting unknown keys with the list of valid ones."""
    # YAML/JSON bring tuples back as lists; frozen configs hold tuples so they stay hashable and equal.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in (values or {}).items()}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{owner}: unknown config option(s) {unknown}; valid options: {sorted(fields)}")
    return cls(**values)


def build_model(name: str, task: TaskInfo, modalities: tuple[str, ...], config: dict[str, Any] | None = None):
    """Instantiate a registered model for a non-empty subset of modalities ('t', 'a', 'v')."""
    from . import _all  # noqa: F401  (imports every model module so it registers itself)

    cls = MODELS.get(name)
    modalities = tuple(m for m in MODALITIES if m in modalities)
    if not modalities:
        raise ConfigError(f"model {name!r}: choose at least one modality of {MODALITIES}")
    missing = [m for m in getattr(cls, "requires", ()) if m not in modalities]
    if missing:
        raise ConfigError(f"model {name!r} needs modality {missing} (got {list(modalities)}); pass --modalities including {','.join(missing)}")
    absent = [m for m in modalities if m not in task.in_dims]
    if absent:
        raise ConfigError(f"model {name!r}: no features for modality {absent}; available: {sorted(task.in_dims)}")
    return cls(task, modalities, make_config(cls.config_cls, config, f"model {name!r}"))
