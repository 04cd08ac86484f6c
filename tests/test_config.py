"""Typed configs (common/config.py): every config class checks types and choices from its annotations,
with one error format; the override parser; --print-config round-trips through --config."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from mer_pipe.common.config import Config, parse_overrides
from mer_pipe.common.errors import ConfigError
from mer_pipe.extractors import EXTRACTORS
from mer_pipe.models import _all  # noqa: F401
from mer_pipe.models.registry import MODELS
from mer_pipe.models.tcn import TCNConfig
from mer_pipe.models.vsc import VSCConfig
from mer_pipe.pipeline.train.loop import TrainConfig

CLASSES = [TrainConfig, VSCConfig, TCNConfig, *(MODELS.get(n).config_cls for n in MODELS.names()),
           *(EXTRACTORS.get(n).config_cls for n in EXTRACTORS.names())]
IDS = [c.__name__ for c in CLASSES]


def _fields(cls, kind):
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if not f.name.startswith("_") and kind(hints[f.name])]


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_every_config_is_typed_and_defaults_validate(cls):
    assert issubclass(cls, Config)
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg  # plain-data round trip (YAML, keys)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_wrong_types_are_refused_with_key_value_and_expected_type(cls):
    for name, tp in _fields(cls, lambda t: t in (int, float)):
        with pytest.raises(ConfigError, match=rf"{name}='abc': expected (an integer|a number); fix it"):
            cls.from_dict({name: "abc"})
    for name, tp in _fields(cls, lambda t: t is bool):
        with pytest.raises(ConfigError, match=rf"{name}='maybe': expected true or false"):
            cls.from_dict({name: "maybe"})
        for text, value in (("true", True), ("False", False), ("1", True), ("0", False), ("yes", True)):
            assert getattr(cls.from_dict({name: text}), name) is value
    for name, tp in _fields(cls, lambda t: typing.get_origin(t) is typing.Literal):
        with pytest.raises(ConfigError, match=rf"{name}='not-a-choice': expected one of"):
            cls.from_dict({name: "not-a-choice"})
        assert getattr(cls.from_dict({name: typing.get_args(tp)[-1]}), name) == typing.get_args(tp)[-1]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['no_such_option'\]; valid options"):
        cls.from_dict({"no_such_option": 1})


def test_numbers_from_strings_lists_to_tuples_and_nested_configs():
    cfg = MODELS.get("deepmsi-mer").config_cls.from_dict({"guide_dim": "64", "cls_hidden": [32, "16"],
                                                          "vsc": {"k": "4"}, "tcn": {"channels": [8, 8]}})
    assert cfg.guide_dim == 64 and cfg.cls_hidden == (32, 16) and cfg.tcn.channels == (8, 8)
    assert cfg.vsc.k == 4
    with pytest.raises(ConfigError, match=r"model\.vsc\.k=0: must be >= 1"):
        MODELS.get("deepmsi-mer").config_cls.from_dict({"vsc": {"k": 0}})
    with pytest.raises(ConfigError, match=r"trainer\.epochs=2\.5: expected an integer"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ConfigError, match=r"trainer\.lr=0\.0: must be > 0"):
        TrainConfig.from_dict({"lr": 0})


def test_override_parser_builds_nested_dicts_and_refuses_bad_items():
    assert parse_overrides(["model.d=128", "trainer.lr=0.0003", "model.vsc.k=8", "trainer.amp=false"]) == {
        "model": {"d": 128, "vsc": {"k": 8}}, "trainer": {"lr": 3e-4, "amp": False}}
    # YAML 1.1 reads 3e-4 as text; the typed config turns it into the float
    assert TrainConfig.from_dict(parse_overrides(["trainer.lr=3e-4"])["trainer"]).lr == 3e-4
    for bad in ("novalue", "=3", "model..d=1", "model.d"):
        with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="already given a value"):
        parse_overrides(["model=1", "model.d=2"])


def test_print_config_round_trips_through_config(tmp_path):
    def run(*args):
        exe = str(__import__("pathlib").Path(sys.executable).with_name("mer-pipe"))
        r = subprocess.run([exe, "train", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = run("--model", "deepmsi-mer", "--dataset", "x", "--seeds", "3,4", "--set", "model.vsc.k=5",
                "--set", "trainer.lr=2e-4", "--print-config")
    assert "k: 5" in first and "lr: 0.0002" in first and "seeds:\n- 3\n- 4" in first
    (tmp_path / "run.yaml").write_text(first)
    assert run("--config", str(tmp_path / "run.yaml"), "--print-config") == first
    assert "lr: 0.001" in run("--config", str(tmp_path / "run.yaml"), "--set", "trainer.lr=1e-3", "--print-config")
