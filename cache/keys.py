"""Cache keys: a declarative spec -> canonical JSON -> sha256.

A feature key identifies one extracted feature set: the stage, the extractor version, the resolved
config (defaults and weights identity included), the manifest digest and the upstream stage's key.
It must be stable across processes, Python runs and dict orders, so it never uses `hash()`, pickles
or paths. This module imports only the standard library: key computation stays fast and light.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath

from mer_pipe.common.errors import ConfigError

# Bump only on purpose: it changes every key and so invalidates every cached feature set.
KEY_SCHEMA = 1
KEY_LENGTH = 16


def _plain(obj: object, where: str) -> object:
    """Convert `obj` to JSON-native types, refusing anything whose meaning is ambiguous."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # int subclasses (IntEnum) collapse to their value
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"canonical_json: non-finite float {obj!r} at {where}; use None or a finite value")
        return float(obj)
    if isinstance(obj, PurePath):
        raise TypeError(
            f"canonical_json: path {str(obj)!r} at {where}; a key must not depend on where files live — "
            "hash the file contents (extractors.base.weights_identity) or use a relative name instead"
        )
    if isinstance(obj, Mapping):
        out = {}
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(
                    f"canonical_json: dict key {k!r} ({type(k).__name__}) at {where}; keys must be str "
                    "(an int key and its string form would otherwise collide)"
                )
            out[k] = _plain(obj[k], f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        raise TypeError(f"canonical_json: set at {where} has no defined order; pass a sorted list")
    # numpy scalars (and 0-d arrays) without importing numpy: they live in module 'numpy' and have .item()
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return _plain(obj.item(), where)
    raise TypeError(
        f"canonical_json: unsupported type {type(obj).__name__} at {where}; "
        "use str, int, float, bool, None, list/tuple or dict with str keys"
    )


def canonical_json(obj: object) -> str:
    """One JSON text per value: sorted keys, no whitespace, float repr, tuples as lists.

    Raises TypeError for paths, sets, non-str dict keys, non-finite floats and unknown types.
    """
    return json.dumps(_plain(obj, "$"), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def feature_key(
    stage: str,
    version: str,
    config: Mapping[str, object],
    manifest_digest: str,
    upstream: str | None = None,
) -> str:
    """Key of a feature set: first 16 hex chars of sha256(canonical JSON of every input).

    `config` is the extractor's resolved config (weights identity included); `upstream` is the key of
    the stage this one consumes, if any.
    """
    for name, value in (("stage", stage), ("version", version), ("manifest_digest", manifest_digest)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"feature_key: {name} must be a non-empty string, got {value!r}")
    if upstream is not None and (not isinstance(upstream, str) or not upstream):
        raise ConfigError(f"feature_key: upstream must be a non-empty key string or None, got {upstream!r}")
    if not isinstance(config, Mapping):
        raise ConfigError(f"feature_key: config must be a dict (the resolved config), got {type(config).__name__}")
    spec = {
        "schema": KEY_SCHEMA,
        "stage": stage,
        "version": version,
        "config": config,
        "manifest_digest": manifest_digest,
        "upstream": upstream,
    }
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:KEY_LENGTH]
