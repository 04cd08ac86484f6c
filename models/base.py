"""The base every registered model derives from: its explicit trainer interface, with defaults.

The trainer builds one optimiser per entry of `param_groups()` (the "main" group takes the trainer's
optimiser settings; other groups say what they change) and calls `before_step(batch, optimizers)` before
each main step. A model with its own adversary (AR-IIGCN's discriminators) returns a second group and
updates it in `before_step`; nothing is probed with hasattr.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn
from torch.optim import Optimizer

from .batch import DialogueBatch


@dataclass(frozen=True)
class ParamGroup:
    """Parameters with their own optimiser. None keeps the trainer's value (optimizer, lr, weight decay).
    `main=False` groups are stepped by the model in `before_step`, not by the trainer's backward."""

    params: list[nn.Parameter]
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    main: bool = True


SOURCES = ("paper", "official code", "sibling code", "proposed")


@dataclass(frozen=True)
class PaperValue:
    """One row of a model's `--profile paper` table: `key` ("model.d", "model.vsc.k", "trainer.lr") takes
    `value` instead of the dev default. source: paper (stated in the paper's text) | official code (the
    model's released code) | sibling code (the authors' code for a sibling model, AGF-IB) | proposed (the
    specification's reconstruction); ref: where in the specification (../shared/docs/models.md) and why."""

    key: str
    value: Any
    source: Literal["paper", "official code", "sibling code", "proposed"]
    ref: str


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"vsc.k": 8, "d": 4} -> {"vsc": {"k": 8}, "d": 4}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class ERCModel(nn.Module):
    """Subclasses set `name`, `config_cls`, `requires`, `train_defaults` (trainer options that suit the
    model, chosen on dev) and `paper_profile`: the rows (PaperValue) where the specification's model and
    trainer differ from the dev defaults. From those rows every subclass gets `paper_model_defaults` (model
    config overrides, nested) and `paper_train_defaults` (train_defaults with the paper's trainer rows), the
    base of `--profile paper`; docs/models.md's profile table is generated from the same rows."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    requires: ClassVar[tuple[str, ...]] = ()
    train_defaults: ClassVar[dict[str, Any]] = {}
    paper_profile: ClassVar[tuple[PaperValue, ...]] = ()
    paper_model_defaults: ClassVar[dict[str, Any]] = {}
    paper_train_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rows = cls.__dict__.get("paper_profile", cls.paper_profile)
        model = {r.key.split(".", 1)[1]: r.value for r in rows if r.key.startswith("model.")}
        trainer = {r.key.split(".", 1)[1]: r.value for r in rows if r.key.startswith("trainer.")}
        cls.paper_model_defaults = nest(model)
        cls.paper_train_defaults = {**cls.train_defaults, **trainer}

    def param_groups(self) -> dict[str, ParamGroup]:
        """name -> ParamGroup; the default is one main group with every parameter."""
        return {"main": ParamGroup(list(self.parameters()))}

    def before_step(self, batch: DialogueBatch, optimizers: dict[str, Optimizer]) -> None:
        """Called on every training batch before the main forward/backward; default: nothing."""
