"""What a sweep runs: a grid of run-config points, expanded and validated before anything trains.

A sweep is a base run config (the `train` options: --model, --dataset, --set, --config, ...) plus a grid:
`--grid model.d=128,256 --grid trainer.lr=1e-4,5e-4` is the cartesian product of the values, in the order
given. In a sweep YAML, `grid:` is a mapping (one product) or a list of mappings (the union of their
products, like scikit-learn's ParameterGrid). Grid keys are `model.KEY` / `trainer.KEY` (nested as
`model.vsc.k`), `model` (a model name; selection is then per model) or `modalities` (`t`, `t+a`, `[t,a]`).

Precedence, lowest first: the run-config defaults < the sweep YAML's base keys < --set < the grid point.
Each point is resolved through `resolve_run_config` exactly as `mer-pipe train` would, so a bad key, value or
type is one ConfigError naming the point, before any run starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mer_pipe.common.config import parse_value
from mer_pipe.common.errors import ConfigError

from mer_pipe.pipeline.train.runconfig import RUN_KEYS, RunConfig, read_yaml_mapping, resolve_run_config

GRID_RUN_KEYS = ("model", "modalities")
GRID_SLOT_KEYS = ("slots.t", "slots.a", "slots.v")  # which lock slot feeds a modality: "which feature set"
SWEEP_FILE_KEYS = (*RUN_KEYS, "grid", "set", "epochs")
GRID_EXAMPLE = "--grid model.d=128,256 --grid trainer.lr=1e-4,5e-4"


@dataclass(frozen=True)
class Point:
    """One grid point: its config id (c00, c01, ...), a label (`model.d=128 trainer.lr=0.0001`), the grid
    values, and the resolved run config with every seed of the sweep."""

    id: str
    label: str
    values: dict[str, Any]
    config: RunConfig
    cv_folds: int = 0  # --select-on cvK: K folds of the training dialogues choose (cvselect.py); 0 = select_on

    def key(self, features: Mapping[str, Any]) -> str:
        """Identity of the resolved config + feature keys (not seeds, not device): first 16 hex of sha256."""
        return config_key(self.config, features)


@dataclass
class SweepSpec:
    """The parsed sweep: base run-config values, --set items and grid blocks (each key -> list of values)."""

    base: dict[str, Any] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    grid: list[dict[str, list[Any]]] = field(default_factory=list)

    def describe_grid(self) -> list[dict[str, list[Any]]]:
        return [{k: list(v) for k, v in block.items()} for block in self.grid]


def _split_values(raw: str) -> list[str]:
    """'128,256' -> ['128', '256']; commas inside [...] or {...} stay (a list value: [64,64],[128])."""
    out, depth, cur = [], 0, []
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def check_grid_key(key: str, where: str) -> str:
    parts = key.split(".")
    if any(not p for p in parts) or not key:
        raise ConfigError(f"{where}: {key!r} is not a key; write KEY=V1,V2, e.g. {GRID_EXAMPLE}")
    if key in GRID_RUN_KEYS or key in GRID_SLOT_KEYS or (parts[0] in ("model", "trainer") and len(parts) > 1):
        return key
    raise ConfigError(f"{where}: grid key {key!r} is not sweepable; use model.KEY or trainer.KEY (e.g. "
                      f"model.d, trainer.lr), 'model' (model names), 'modalities' (t, t+a) or slots.t (lock slots, "
                      f"e.g. slots.t=t,t_ft: which feature set); other run settings (seeds, select_on, ...) are sweep "
                      f"options")


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--grid KEY=V1,V2` items -> {KEY: [v1, v2]} (values typed as YAML, checked later by the configs)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        where = f"--grid {item!r}"
        if not sep:
            raise ConfigError(f"{where}: write KEY=V1,V2,..., e.g. {GRID_EXAMPLE}")
        key = check_grid_key(key.strip(), where)
        values = _split_values(raw)
        if not raw.strip() or any(not v for v in values):
            raise ConfigError(f"{where}: empty value; give comma-separated values, e.g. --grid {key}=1,2")
        if key in grid:
            raise ConfigError(f"{where}: {key} is given twice; put all its values in one --grid {key}=V1,V2")
        grid[key] = [_typed(v) for v in values]
    return grid


def _typed(text: str) -> Any:
    """A grid value as YAML, plus exponent floats without a dot (YAML 1.1 reads 1e-4 as text)."""
    v = parse_value(text)
    if isinstance(v, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", v.strip()):
        return float(v)
    return v


def _grid_block(block: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(block, Mapping) or not block:
        raise ConfigError(f"{where}: a grid block is a mapping KEY: [values], e.g. {{model.d: [128, 256]}}")
    out = {}
    for key, values in block.items():
        check_grid_key(str(key), where)
        vals = list(values) if isinstance(values, (list, tuple)) else [values]
        if not vals:
            raise ConfigError(f"{where}: {key} has no values; give a list, e.g. {key}: [1, 2]")
        out[str(key)] = vals
    return out


def load_sweep_file(path: str | Path | None) -> tuple[dict[str, Any], list[str], list[dict[str, list[Any]]]]:
    """A sweep YAML: run-config keys (as in `train --print-config`), optional `set:` (list of KEY=VALUE or a
    mapping), optional `epochs:`, and `grid:` (mapping or list of mappings). Returns (base, sets, grid blocks)."""
    if path is None:
        return {}, [], []
    p = Path(path)
    data = read_yaml_mapping(p, "a sweep YAML (run-config keys plus grid:)")
    unknown = sorted(set(data) - set(SWEEP_FILE_KEYS) - {"notes", "features", "cache_dir"})
    if unknown:
        raise ConfigError(f"--config {p}: unknown key(s) {unknown}; allowed: {list(SWEEP_FILE_KEYS)}")
    raw_sets = data.pop("set", None) or []
    if isinstance(raw_sets, Mapping):
        raw_sets = [f"{k}={json.dumps(v)}" for k, v in raw_sets.items()]
    if not isinstance(raw_sets, list) or not all(isinstance(s, str) for s in raw_sets):
        raise ConfigError(f"--config {p}: 'set:' is a list of KEY=VALUE strings or a mapping KEY: VALUE")
    grid = data.pop("grid", None)
    blocks = [] if grid is None else [_grid_block(b, f"--config {p} grid")
                                      for b in (grid if isinstance(grid, list) else [grid])]
    for section in ("model_config", "trainer", "slots"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"--config {p}: '{section}:' must be a mapping of options")
    base = {k: v for k, v in data.items() if k in (*RUN_KEYS, "epochs")}
    return base, list(raw_sets), blocks


def _points(blocks: Sequence[Mapping[str, list[Any]]]) -> list[dict[str, Any]]:
    """Cartesian product of each block, blocks one after another; an empty grid is the single base point."""
    if not blocks:
        return [{}]
    out = []
    for block in blocks:
        keys = list(block)
        out += [dict(zip(keys, combo)) for combo in itertools.product(*(block[k] for k in keys))]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def point_label(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "(base config)"


def _modalities_value(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        return [m.strip() for m in v.replace("+", ",").split(",") if m.strip()]
    if isinstance(v, (list, tuple)):
        return [str(m) for m in v]
    raise ConfigError(f"{where}: modalities value {v!r}: write t, t+a or [t,a]")


def resolve_point(spec: SweepSpec, values: Mapping[str, Any], where: str) -> RunConfig:
    """The run config of one point (every sweep seed); errors name the point."""
    flags = dict(spec.flags)
    sets = list(spec.sets)
    for key, v in values.items():
        if key == "model":
            flags["model"] = str(v)
        elif key == "modalities":
            flags["modalities"] = _modalities_value(v, where)
        elif key in GRID_SLOT_KEYS:
            flags["slots"] = {**(flags.get("slots") or {}), key.split(".", 1)[1]: str(v)}
        else:
            sets.append(f"{key}={json.dumps(v)}")
    try:
        return resolve_run_config(spec.base, sets, **flags)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def expand(spec: SweepSpec) -> list[Point]:
    """Every grid point resolved and validated (none trains before all are); duplicates are refused.
    `--select-on cvK` is a sweep option: its points' runs select epochs on dev as usual, and K folds of the
    training dialogues choose between configs (Point.cv_folds)."""
    from .cvselect import parse_select_on

    flags, base = dict(spec.flags), dict(spec.base)
    where = flags if flags.get("select_on") is not None else base  # the flag beats the sweep YAML
    cv_folds = parse_select_on(where["select_on"])[1] if isinstance(where.get("select_on"), str) else 0
    if cv_folds:  # the runs themselves select epochs on dev
        flags.pop("select_on", None)
        base.pop("select_on", None)
    spec = dataclasses.replace(spec, flags=flags, base=base)
    if cv_folds and (spec.flags.get("protocol") or spec.base.get("protocol") or "standard") != "standard":
        raise ConfigError(f"--select-on cv{cv_folds} cuts folds of the standard split's training dialogues; drop "
                          "--protocol or use --select-on dev")
    points: list[Point] = []
    seen: dict[str, str] = {}
    for values in _points(spec.grid):
        label = point_label(values)
        cfg = resolve_point(spec, values, f"grid point {label}")
        ident = config_key(cfg, {})
        if ident in seen:
            raise ConfigError(f"grid point {label} resolves to the same config as {seen[ident]}; drop one of them "
                              "(a value equal to the default counts as the default)")
        seen[ident] = label
        points.append(Point(f"c{len(points):02d}", label, dict(values), cfg, cv_folds))
    return points


def config_key(cfg: RunConfig, features: Mapping[str, Any]) -> str:
    """sha256 over the resolved config without seeds and device, plus the feature keys it reads."""
    from mer_pipe.cache.keys import canonical_json

    d = cfg.to_dict()
    for k in ("seeds", "device"):
        d.pop(k, None)
    d = json.loads(json.dumps(d))  # plain lists/dicts
    return hashlib.sha256(canonical_json({"config": d, "features": dict(features)}).encode()).hexdigest()[:16]


def task_key(config_key_: str, seed: int) -> str:
    return hashlib.sha256(f"{config_key_}/seed={seed}".encode()).hexdigest()[:16]
