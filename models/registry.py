"""Model registry: `build_model(name, task, modalities, config)`; names are saved in checkpoints."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from mer_pipe.common.config import Config
from mer_pipe.common.errors import ConfigError
from mer_pipe.common.registry import Registry

from .batch import MODALITIES, TaskInfo

MODELS: Registry = Registry("model")


class ModelConfig(Config):
    """Base of every model config (`@dataclass(frozen=True) class XConfig(ModelConfig)`): fields are typed
    and checked from their annotations (common/config.py); `validate()` adds range rules."""

    section: ClassVar[str] = "model"
    positive: ClassVar[tuple[str, ...]] = ()  # widths and layer counts: ints (or lists of ints) that must be >= 1
    # fields added after checkpoints were written -> the value those older checkpoints ran with (from_saved)
    saved_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_saved(cls, values: dict[str, Any]):
        """A config saved in a checkpoint: a field it lacks takes the value in effect when it was written
        (`saved_defaults`), not today's default, so an old run re-scores exactly."""
        return cls.from_dict({**cls.saved_defaults, **values})

    def __post_init__(self) -> None:
        super().__post_init__()
        # Rules every model shares, so a typo fails here and not inside torch: rates in [0, 1), sizes not
        # negative, widths and layer counts (`positive`) at least 1.
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.positive:
                many = isinstance(value, tuple)
                self.require(all(v >= 1 for v in value) if many else value >= 1, f.name,
                             "every entry must be >= 1 (widths)" if many else "must be >= 1 (a width or layer count)")
            elif f.name.endswith("dropout"):
                self.require(0.0 <= value < 1.0, f.name, "must be in [0, 1) (a dropout probability)")
            elif type(value) is int:
                self.require(value >= 0, f.name, "must be >= 0")


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
    if config is None:
        config = cls.config_cls()
    elif not isinstance(config, cls.config_cls):
        config = cls.config_cls.from_dict(config)
    return cls(task, modalities, config)
