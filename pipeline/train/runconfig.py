"""The run config: everything `mer-pipe train` does, as one typed object (printed by --print-config,
read back by --config, saved as the run's config.yaml).

Precedence, lowest first: the component defaults (TrainConfig, the model's config class) < the model's
`train_defaults` < with `profile: paper`, the model's `paper_profile` rows (model and trainer fields where
the specification differs from the dev defaults) < the `--config` YAML < `--set model.K=V` / `--set
trainer.K=V` < the dedicated flags (--epochs, --seeds, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from mer_pipe.common.commands import command
from mer_pipe.common.config import Config, deep_merge, parse_overrides, to_plain
from mer_pipe.common.errors import ConfigError
from mer_pipe.common.modalities import MODALITIES

from .loop import TrainConfig

RUN_KEYS = ("model", "dataset", "modalities", "seeds", "protocol", "select_on", "device", "profile", "slots",
            "model_config", "trainer")
_IGNORED_KEYS = ("notes", "features", "cache_dir")  # written into a run's config.yaml for the reader


@dataclass(frozen=True)
class RunConfig(Config):
    """model/dataset: registered model and prepared dataset names. modalities: empty = every modality
    whose slot has usable features. slots: modality -> lock slot (default: the modality letter)."""

    section: ClassVar[str] = ""  # run-level keys are top-level: seeds, trainer.lr, ...
    examples: ClassVar[dict[str, str]] = {"modalities": "t,a,v", "seeds": "0,1,2", "slots": "a=a_w2v",
                                          "protocol": "standard", "select_on": "dev", "device": "cpu"}

    model: str
    dataset: str
    modalities: tuple[Literal["t", "a", "v"], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    protocol: Literal["standard", "kfold10-utterance"] = "standard"
    select_on: Literal["dev", "test"] = "dev"
    device: str = "auto"
    profile: Literal["dev", "paper"] = "dev"
    slots: dict[str, str] = field(default_factory=dict)
    model_config: Any = None  # the model's own Config class, built in validate()
    trainer: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        from mer_pipe.models import _all  # noqa: F401  (registers every model)
        from mer_pipe.models.registry import MODELS

        cls = MODELS.get(self.model)  # unknown name -> ConfigError listing the choices
        if not isinstance(self.model_config, cls.config_cls):
            object.__setattr__(self, "model_config", cls.config_cls.from_dict(self.model_config or {}))
        self.require(bool(self.seeds), "seeds", "give at least one seed, e.g. 0,1,2")
        self.require(len(set(self.seeds)) == len(self.seeds), "seeds", "seeds must be distinct")
        self.require(all(0 <= s < 2**32 for s in self.seeds), "seeds", "seeds must be in 0 .. 2**32-1")
        self.require(len(set(self.modalities)) == len(self.modalities), "modalities", "each modality once")
        bad = [m for m in self.slots if m not in MODALITIES]
        self.require(not bad, "slots", f"keys must be modalities {', '.join(MODALITIES)} (e.g. a: a_w2v)")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in self.modalities))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["model_config"] = self.model_config.to_dict()
        return d


def parse_list(spec: str | Sequence[Any] | None, what: str, example: str) -> list[str] | None:
    """'0,1,2' or [0, 1, 2] -> ['0', '1', '2'] (typed later by RunConfig); None stays None. An empty item
    ('1,,2', a trailing comma) is refused: a typo that would silently drop a value."""
    if spec is None:
        return None
    items = [str(s).strip() for s in (spec.split(",") if isinstance(spec, str) else list(spec))]
    if any(not s for s in items) and any(items):
        raise ConfigError(f"--{what} {spec!r} has an empty item; write a comma list without gaps, e.g. --{what} {example}")
    items = [s for s in items if s]
    if not items:
        raise ConfigError(f"--{what} {spec!r}: give a comma list, e.g. --{what} {example}")
    return items


def read_yaml_mapping(p: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file `--config p`; `what` names the file the user should give instead."""
    import yaml

    if not p.is_file():
        raise ConfigError(f"--config {p} is not a file; give {what}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {p} is not valid UTF-8 YAML ({type(exc).__name__}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """A run YAML (--print-config output or a run's config.yaml); unknown top-level keys are refused."""
    if path is None:
        return {}
    p = Path(path)
    data = read_yaml_mapping(p, f"a YAML written by `{command('train', print_config=True)}`")
    unknown = sorted(set(data) - set(RUN_KEYS) - set(_IGNORED_KEYS))
    if unknown:
        raise ConfigError(f"--config {p}: unknown key(s) {unknown}; allowed: {list(RUN_KEYS)}")
    for section in ("model_config", "trainer", "slots"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"--config {p}: '{section}:' must be a mapping of options, got "
                              f"{type(data[section]).__name__}")
    return {k: v for k, v in data.items() if k in RUN_KEYS}


def resolve_run_config(file_values: Mapping[str, Any], sets: Sequence[str] = (), **flags: Any) -> RunConfig:
    """Merge defaults, the model's train defaults, the config file, `--set` and flags (None = not given)."""
    values = dict(file_values)
    over = parse_overrides(sets)
    bad = sorted(set(over) - {"model", "trainer"})
    if bad:
        raise ConfigError(f"--set {bad[0]}...: train options are model.KEY=VALUE or trainer.KEY=VALUE "
                          f"(run-level settings have their own flags: --seeds, --modalities, ...)")
    for key, value in flags.items():
        if value is not None:
            values[key] = value
    if not values.get("model"):
        from mer_pipe.common.registry import declared_names

        raise ConfigError(f"--model is required; choose one of: {', '.join(declared_names('mer_pipe.models', 'MODELS'))}")
    if not values.get("dataset"):
        raise ConfigError("--dataset is required (a prepared dataset name, e.g. meld or synth-meld)")
    from mer_pipe.models import _all  # noqa: F401  (torch is imported only after the cheap checks)
    from mer_pipe.models.registry import MODELS

    cls = MODELS.get(values["model"])
    paper = values.get("profile", "dev") == "paper"
    base = cls.paper_train_defaults if paper else cls.train_defaults
    epochs = values.pop("epochs", None)
    trainer = deep_merge(deep_merge(dict(base), values.get("trainer") or {}), over.get("trainer", {}))
    if epochs is not None:
        trainer["epochs"] = epochs
    values["trainer"] = trainer
    # on top of the model's full defaults, so a nested override (model.vsc.k) keeps the model's other vsc values
    model_base = deep_merge(cls.config_cls().to_dict(), cls.paper_model_defaults if paper else {})
    values["model_config"] = deep_merge(deep_merge(model_base, values.get("model_config") or {}), over.get("model", {}))
    return RunConfig.from_dict(values)


def _lookup(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def paper_table(model: str) -> list[dict[str, Any]]:
    """The `--profile paper` rows of a registered model: key, paper value, dev default, source, reference."""
    from mer_pipe.models import _all  # noqa: F401
    from mer_pipe.models.registry import MODELS

    cls = MODELS.get(model)
    dev_model, dev_trainer = cls.config_cls().to_dict(), TrainConfig.from_dict(cls.train_defaults).to_dict()
    rows = []
    for r in cls.paper_profile:
        section, key = r.key.split(".", 1)
        dev = _lookup(dev_model if section == "model" else dev_trainer, key)
        rows.append({"key": r.key, "paper": r.value, "dev": dev, "source": r.source, "ref": r.ref})
    return rows


def _cell(v: Any) -> str:
    return "true" if v is True else "false" if v is False else f"{v:g}" if isinstance(v, float) else str(v)


def paper_table_markdown() -> str:
    """The table in docs/models.md ("--profile paper"), generated from every model's `paper_profile`."""
    from mer_pipe.models import _all  # noqa: F401
    from mer_pipe.models.registry import MODELS

    lines = ["| model | field | paper | dev default | source | where (specification) |", "|---|---|---|---|---|---|"]
    for name in MODELS.names():
        for r in paper_table(name):
            lines.append(f"| {name} | `{r['key']}` | {_cell(r['paper'])} | {_cell(r['dev'])} | {r['source']} | {r['ref']} |")
    return "\n".join(lines)


def profile_notes(cfg: RunConfig) -> list[str]:
    """Comment lines for config.yaml / --print-config: which values the paper profile set."""
    if cfg.profile != "paper":
        return []
    rows = paper_table(cfg.model)
    if not rows:
        return ["profile paper: no value differs from the dev profile"]
    return ["profile paper: the specification's values (docs/models.md), unless overridden below:"] + [
        f"  {r['key']}: {_cell(r['paper'])} (dev {_cell(r['dev'])}; {r['source']}, {r['ref']})" for r in rows]


def config_yaml(cfg: RunConfig, notes: Sequence[str] = ()) -> str:
    """The YAML that --print-config shows and config.yaml stores (notes as comments on top)."""
    import yaml

    head = "".join(f"# {n}\n" for n in [*notes, *profile_notes(cfg)])
    return head + yaml.safe_dump(to_plain(cfg.to_dict()), sort_keys=False)
