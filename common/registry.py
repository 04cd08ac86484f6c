"""Name registries: the registered name is what is saved in shards and checkpoints and looked up again."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a unique name to a class. Duplicates are errors; a miss lists the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str):
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def declared_names(package: str, registry: str) -> list[str]:
    """The names that the modules of `package` register with `@REGISTRY.register("name")`, read from their
    source without importing them: a help text lists the models without importing torch. A test keeps this
    equal to the populated registry (tests/test_cli_train.py)."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    pattern = re.compile(rf"^@{re.escape(registry)}\.register\(\s*[\"']([^\"']+)[\"']\s*\)", re.M)
    names = {n for folder in folders for p in Path(folder).glob("*.py")
             for n in pattern.findall(p.read_text(encoding="utf-8"))}
    return sorted(names)
