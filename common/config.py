"""Typed configs: one frozen-dataclass base validated from its annotations, and one KEY=VALUE override parser.

Every component config (model, trainer, extractor, fine-tune, run) is

    @dataclass(frozen=True)
    class XConfig(Config):
        section: ClassVar[str] = "trainer"      # how errors name its keys: trainer.lr=...
        lr: float = 1e-3
        mode: Literal["a", "b"] = "a"

and at construction every field is checked and coerced from its annotation: int, float, str, bool
(true/false/yes/no/1/0 strings accepted, "maybe" refused), `Literal` choices, `X | None`, tuples
(`tuple[int, ...]` or fixed length; YAML lists become tuples) and nested `Config`s (a dict becomes the
nested config). `validate()` then checks ranges and cross-field rules. Errors share one format:
`trainer.amp='maybe': expected true or false (also 1/0, yes/no); fix it in --config or with --set trainer.amp=...`.

Configs travel as objects; `to_dict()` turns them into plain data only at the edge (YAML, cache keys).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, Mapping, Sequence, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="Config")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false (also 1/0, yes/no)"
    if tp in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} values"
    if isinstance(tp, type) and issubclass(tp, Config):
        return f"a mapping of {tp.__name__} options"
    return getattr(tp, "__name__", str(tp))


class _Bad(Exception):
    """Internal: the value does not fit the annotation (turned into one ConfigError by `coerce`)."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        raise _Bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise _Bad from None
            if f.is_integer():
                return int(f)
        raise _Bad
    if tp is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Bad from None
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and not isinstance(choice, str) and str(choice) == value:
                return choice
        raise _Bad
    if origin in (typing.Union, types.UnionType):
        for a in sorted(args, key=lambda a: a is not type(None)):  # None first: "null" stays None
            try:
                return _coerce(value, a, where)
            except (_Bad, ConfigError):
                continue
        raise _Bad
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _Bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Bad
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Bad
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_dict(value, prefix=where.split(".", 1)[1] if where.startswith(".") else where)
        raise _Bad
    raise TypeError(f"{where}: config annotation {tp!r} is not supported by common.config")


def _fix(where: str, example: str | None = None) -> str:
    key = where.split("[")[0]
    if "." in key:
        return f"fix it in --config or with --set {key}={example or '...'}"
    flag = f"--{key.replace('_', '-')}"
    return f"fix the {flag} option" + (f", e.g. {flag} {example}" if example else "") + f" (or '{key}:' in --config)"


def coerce(value: Any, tp: Any, where: str, example: str | None = None) -> Any:
    """`value` checked against annotation `tp` (converted where unambiguous); ConfigError naming `where`."""
    try:
        return _coerce(value, tp, where)
    except _Bad:
        raise ConfigError(f"{where}={value!r}: expected {_describe(tp)}; {_fix(where, example)}") from None


def config_error(where: str, value: Any, rule: str, example: str | None = None) -> ConfigError:
    """The same one-line format for range and cross-field rules checked in `validate()`."""
    return ConfigError(f"{where}={value!r}: {rule}; {_fix(where, example)}")


class Config:
    """Base of every frozen config dataclass. Subclasses set `section` (the key prefix in messages)."""

    section: ClassVar[str] = "config"
    examples: ClassVar[dict[str, str]] = {}  # option -> an example value quoted in error messages

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.name.startswith("_"):
                object.__setattr__(self, f.name, coerce(getattr(self, f.name), hints[f.name], self._where(f.name),
                                                        self.examples.get(f.name)))
        self.validate()

    def _where(self, name: str) -> str:
        prefix = getattr(self, "_prefix", None)
        prefix = self.section if prefix is None else prefix
        return f"{prefix}.{name}" if prefix else name

    def validate(self) -> None:
        """Range and cross-field rules; raise `self.error(name, rule)`. Default: none."""

    def error(self, name: str, rule: str) -> ConfigError:
        return config_error(self._where(name), getattr(self, name), rule, self.examples.get(name))

    def require(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise self.error(name, rule)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None, prefix: str | None = None) -> C:
        """Build from a mapping (YAML, --set); unknown keys list the valid ones."""
        prefix = cls.section if prefix is None else prefix
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{prefix or 'config'}: expected a mapping of options, got {type(values).__name__}")
        values = dict(values or {})
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"{prefix or 'config'}: unknown option(s) {unknown}; valid options: {sorted(names)}")
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_prefix", prefix)  # so nested configs name keys as model.vsc.k
        obj.__init__(**values)  # type: ignore[misc]
        return obj

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples -> lists, nested configs -> dicts): for YAML, JSON and cache keys."""
        return {name: to_plain(getattr(self, name)) for name in self.field_names()}

    def merged(self: C, overrides: Mapping[str, Any]) -> C:
        """A copy with (possibly nested) overrides applied and everything validated again."""
        return type(self).from_dict(deep_merge(self.to_dict(), overrides), getattr(self, "_prefix", None))


def to_plain(obj: Any) -> Any:
    if isinstance(obj, Config):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings merge key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_value(text: str) -> Any:
    """A --set value as YAML scalar/list (3e-4 -> float, true -> bool, [1,2] -> list); bad YAML stays text."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """['model.d=128', 'trainer.lr=3e-4'] -> {'model': {'d': 128}, 'trainer': {'lr': 0.0003}}.

    The one KEY=VALUE parser of the CLI (`features --set` and `train --set`). Keys are dotted paths
    into the config tree; nothing is routed by guessing."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise ConfigError(f"{option} {item!r}: write SECTION.KEY=VALUE, e.g. {option} trainer.lr=3e-4")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{option} {item!r}: {p!r} was already given a value, it cannot also hold options")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"{option} {item!r}: {key!r} is a section; set one of its options, e.g. {key}.NAME=VALUE")
        node[parts[-1]] = parse_value(raw.strip())
    return out
