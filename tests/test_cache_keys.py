"""Cache keys: canonical JSON, stability across processes, sensitivity to every input, weights digests."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.cache.keys import canonical_json, feature_key
from mer_pipe.common.errors import ConfigError

CONFIG = {
    "model": "roberta-large",
    "revision": "abc123",
    "weights_sha256": "f" * 64,
    "layers": [-1, -2, -3, -4],
    "pool": "mean",
    "max_length": 128,
    "sample_rate": 16000,
    "scale": 0.5,
    "lowercase": False,
    "extra": {"b": 1, "a": None},
}
ARGS = ("text", "1", CONFIG, "d" * 64)
# The key of ARGS. It changes only when the key recipe changes (KEY_SCHEMA, field names, JSON rules):
# that invalidates every user's cache, so update it deliberately, never to make the test pass.
GOLDEN = "1039544689a6e633"
# The exact text that is hashed (documents the recipe: schema, sorted keys, no whitespace).
GOLDEN_TEXT = (
    '{"config":{"extra":{"a":null,"b":1},"layers":[-1,-2,-3,-4],"lowercase":false,"max_length":128,'
    '"model":"roberta-large","pool":"mean","revision":"abc123","sample_rate":16000,"scale":0.5,'
    '"weights_sha256":"' + "f" * 64 + '"},"manifest_digest":"' + "d" * 64 + '","schema":1,"stage":"text",'
    '"upstream":null,"version":"1"}'
)


def test_canonical_json_rules():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert canonical_json((1, 2.5, None, True)) == "[1,2.5,null,true]"
    assert canonical_json(0.1) == "0.1"  # float repr, not a rounded format
    assert canonical_json(1e-20) == "1e-20"
    assert canonical_json({"x": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True)}) == '{"n":3,"ok":true,"x":0.5}'
    assert canonical_json("é") == '"é"'
    assert canonical_json(1) != canonical_json(1.0)  # an int and a float are different configs


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (Path("/data/model.bin"), "path"),
        ({"w": Path("rel/model.bin")}, "$.w"),
        ({1, 2}, "set"),
        ({1: "a"}, "dict key"),
        (float("nan"), "non-finite"),
        (object(), "unsupported type"),
        (np.zeros(3), "unsupported type"),
    ],
)
def test_canonical_json_refuses_ambiguous_values(bad, fragment):
    with pytest.raises(TypeError, match=fragment.replace("$", r"\$").replace(".", r"\.")):
        canonical_json(bad)


def test_feature_key_shape_and_golden():
    key = feature_key(*ARGS)
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert key == GOLDEN
    assert hashlib.sha256(GOLDEN_TEXT.encode()).hexdigest()[:16] == GOLDEN


def test_feature_key_ignores_dict_order():
    reordered = json.loads(json.dumps(dict(reversed(list(CONFIG.items())))))
    reordered["extra"] = {"a": None, "b": 1}
    assert list(reordered) != list(CONFIG)
    assert feature_key("text", "1", reordered, "d" * 64) == feature_key(*ARGS)
    # tuples and lists mean the same
    assert feature_key("text", "1", {**CONFIG, "layers": (-1, -2, -3, -4)}, "d" * 64) == feature_key(*ARGS)


def test_feature_key_stable_across_processes():
    code = (
        "from mer_pipe.cache.keys import feature_key\n"
        f"print(feature_key('text', '1', {CONFIG!r}, {'d' * 64!r}))\n"
    )
    # a different hash seed would change hash()-based keys; ours must not care
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert out.stdout.strip() == feature_key(*ARGS)


def test_import_keys_stays_light():
    code = "import sys, mer_pipe.cache.keys; print('numpy' in sys.modules, 'h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("field", sorted(CONFIG))
def test_every_config_field_changes_the_key(field):
    base = feature_key(*ARGS)
    value = CONFIG[field]
    changed = {
        str: lambda v: v + "x", bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2,
        list: lambda v: v[:-1], dict: lambda v: {**v, "a": 0},
    }[type(value)](value)
    assert feature_key("text", "1", {**CONFIG, field: changed}, "d" * 64) != base
    without = {k: v for k, v in CONFIG.items() if k != field}
    assert feature_key("text", "1", without, "d" * 64) != base


def test_stage_version_manifest_upstream_change_the_key():
    keys = {
        feature_key(*ARGS),
        feature_key("audio", "1", CONFIG, "d" * 64),
        feature_key("text", "2", CONFIG, "d" * 64),
        feature_key("text", "1", CONFIG, "e" * 64),
        feature_key("text", "1", CONFIG, "d" * 64, upstream="0123456789abcdef"),
        feature_key("text", "1", CONFIG, "d" * 64, upstream="0123456789abcdee"),
    }
    assert len(keys) == 6


def test_feature_key_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="stage"):
        feature_key("", "1", {}, "d")
    with pytest.raises(ConfigError, match="manifest_digest"):
        feature_key("text", "1", {}, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config must be a dict"):
        feature_key("text", "1", [1], "d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        feature_key("text", "1", {"weights": Path("/x")}, "d")
