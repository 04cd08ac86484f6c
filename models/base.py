"""The base every registered model derives from: its explicit trainer interface, with defaults.

The trainer builds one optimiser per entry of `param_groups()` (the "main" group takes the trainer's
optimiser settings; other groups say what they change) and calls `before_step(batch, optimizers)` before
each main step. A model with its own adversary (AR-IIGCN's discriminators) returns a second group and
updates it in `before_step`; nothing is probed with hasattr.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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


class ERCModel(nn.Module):
    """Subclasses set `name`, `config_cls`, `requires` and `train_defaults` (trainer options that suit
    the model; `paper_train_defaults` are the paper's, for `--profile paper`)."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    requires: ClassVar[tuple[str, ...]] = ()
    train_defaults: ClassVar[dict[str, Any]] = {}
    paper_train_defaults: ClassVar[dict[str, Any]] = {}

    def param_groups(self) -> dict[str, ParamGroup]:
        """name -> ParamGroup; the default is one main group with every parameter."""
        return {"main": ParamGroup(list(self.parameters()))}

    def before_step(self, batch: DialogueBatch, optimizers: dict[str, Optimizer]) -> None:
        """Called on every training batch before the main forward/backward; default: nothing."""
