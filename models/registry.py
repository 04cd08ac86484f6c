"""Model registry: `build_model(name, task, modalities, config)`; names are saved in checkpoints."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from mer_pipe.common.errors import ConfigError
from mer_pipe.common.registry import Registry

from .batch import MODALITIES, TaskInfo

MODELS: Registry = Registry("model")


def tuple_fields(cfg: Any) -> None:
    """Turn list-valued fields of a frozen config dataclass into tuples, in place."""
    # YAML/JSON bring tuples back as lists; frozen configs hold tuples so they stay hashable and equal.
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))


class ModelConfig:
    """Base of every model config dataclass (`@dataclass(frozen=True) class XConfig(ModelConfig)`):
    lists become tuples however the config is built (make_config, or `XConfig(**yaml_dict)` directly),
    then `validate()` (override it; default checks nothing) raises ConfigError on bad values."""

    def __post_init__(self) -> None:
        tuple_fields(self)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the option, its value and the choices; called after tuple_fields."""


def check_choices(owner: str, *checks: tuple[str, Any, Sequence[Any]]) -> None:
    """Each check is (option, value, choices); the first value outside its choices raises ConfigError."""
    for opt, val, choices in checks:
        if val not in choices:
            raise ConfigError(f"{owner}: option {opt}={val!r}; choose one of {list(choices)}")


def make_config(cls: type, values: dict[str, Any] | None, owner: str):
    """Build a frozen config dataclass, rejecting unknown keys with the list of valid ones."""
    values = dict(values or {})  # list -> tuple happens in ModelConfig.__post_init__
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
