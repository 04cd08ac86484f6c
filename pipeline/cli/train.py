"""`mer-pipe train`, `mer-pipe evaluate`, `mer-pipe demo` (typer command functions; pipeline/cli.py registers them).

Options default to None: the defaults live in RUN_DEFAULTS (run level), train.TrainConfig /
MODEL_TRAIN_DEFAULTS (trainer) and each model's config dataclass. Precedence, lowest first:
those defaults < `--config FILE.yaml` < `--set key=value` < the dedicated flags (--epochs, --seeds, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer

from mer_pipe.common.errors import ConfigError

RUN_DEFAULTS: dict[str, Any] = {"modalities": "t,a,v", "seeds": "0,1,2", "select_on": "dev", "protocol": "standard",
                                "device": "auto"}
DEMO = {"dialogues": 60, "model": "ar-iigcn", "seeds": "0,1,2", "epochs": 15,
        "sets": ("trainer.lr=1e-3", "trainer.patience=0", "model.d=128")}


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _put(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a nested config section")
    d[parts[-1]] = value


def load_config_file(path: Path | None) -> dict[str, Any]:
    """A YAML with optional `model` (name or option dict), `model_config`, `trainer` and run keys
    (modalities, seeds, select_on, protocol, dataset). A run's own config.yaml is accepted."""
    if path is None:
        return {}
    import yaml

    if not Path(path).is_file():
        raise ConfigError(f"--config {path} does not exist; give a YAML file with 'model_config:' and/or 'trainer:' sections")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML ({exc})") from None
    allowed = {"model", "model_config", "trainer", "modalities", "seeds", "select_on", "protocol", "dataset",
               "features", "notes", "device"}
    bad = sorted(set(data) - allowed) if isinstance(data, dict) else ["(not a mapping)"]
    if bad:
        raise ConfigError(f"--config {path}: unknown top-level key(s) {bad}; allowed: {sorted(allowed)}")
    return data


def resolve_options(config: dict[str, Any], sets: Sequence[str]) -> tuple[dict, dict]:
    """(model overrides, trainer overrides) from a config file dict and `--set key=value` items.
    `model.K` / `trainer.K` are explicit; a bare K goes to the trainer if it is a trainer option."""
    import dataclasses

    from mer_pipe.pipeline.train.loop import TrainConfig

    model_cfg = dict(config.get("model_config") or {})
    if isinstance(config.get("model"), dict):
        model_cfg.update(config["model"])
    trainer_cfg = dict(config.get("trainer") or {})
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set trainer.lr=3e-4 or --set model.dropout=0.3")
        key, value = item.split("=", 1)
        key, value = key.strip(), _parse_value(value.strip())
        if key.startswith("model."):
            _put(model_cfg, key[len("model."):], value)
        elif key.startswith("trainer."):
            trainer_cfg[key[len("trainer."):]] = value
        elif key in tfields:
            trainer_cfg[key] = value
        else:
            _put(model_cfg, key, value)
    return model_cfg, trainer_cfg


def parse_slot_overrides(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--slot {item!r}: write MODALITY=SLOT, e.g. --slot a=a_w2v")
        m, s = item.split("=", 1)
        out[m.strip()] = s.strip()
    return out


def train_run(model: str, dataset: str, *, modalities: str | None = None, seeds: str | None = None,
              select_on: str | None = None, protocol: str | None = None, epochs: int | None = None,
              config_file: Path | None = None, sets: Sequence[str] = (), out: Path | None = None,
              device: str | None = None, cache_dir: Path | None = None, slots: Sequence[str] | None = None,
              log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Everything `mer-pipe train` does; returns (run dir, metrics dict)."""
    from mer_pipe.models import _all  # noqa: F401
    from mer_pipe.models.registry import MODELS

    from mer_pipe.pipeline.train.data import load_corpus, parse_modalities
    from mer_pipe.pipeline.train.loop import run_protocol
    from mer_pipe.pipeline.train.protocols import parse_seeds, protocol_notes
    from mer_pipe.pipeline.train.report import default_run_dir, format_summary, write_run
    from mer_pipe.common.devices import resolve_device
    from mer_pipe.pipeline.train.loop import make_train_config, model_config_dict, to_plain

    config = load_config_file(config_file)
    if model is None and isinstance(config.get("model"), str):
        model = config["model"]
    if model is None:
        raise ConfigError(f"--model is required; choose one of: {', '.join(MODELS.names())}")
    MODELS.get(model)  # unknown name -> ConfigError listing the choices, before any data is read
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ConfigError("--dataset is required (a prepared dataset name, e.g. meld or synth-meld)")
    pick = lambda flag, key: flag if flag is not None else config.get(key, RUN_DEFAULTS[key])  # noqa: E731
    mods = parse_modalities(pick(modalities, "modalities"))
    seed_t = parse_seeds(str(pick(seeds, "seeds")) if not isinstance(pick(seeds, "seeds"), list)
                         else ",".join(map(str, pick(seeds, "seeds"))))
    select_on, protocol = pick(select_on, "select_on"), pick(protocol, "protocol")
    model_over, trainer_over = resolve_options(config, sets)
    if epochs is not None:
        trainer_over["epochs"] = epochs
    tcfg = make_train_config(model, trainer_over)
    model_cfg = model_config_dict(model, model_over)  # validates option names before loading features
    dev = resolve_device(device or config.get("device") or RUN_DEFAULTS["device"])
    slot_over = parse_slot_overrides(slots)
    if not slot_over and isinstance(config.get("features"), dict):
        slot_over = {m: f["slot"] for m, f in config["features"].items() if isinstance(f, dict) and "slot" in f and m in mods}
    corpus = load_corpus(dataset, mods, cache_dir, slot_over)
    notes = protocol_notes(protocol, select_on)
    import dataclasses

    resolved = {
        "model": model, "dataset": dataset, "modalities": list(mods), "seeds": list(seed_t),
        "protocol": protocol, "select_on": select_on, "notes": notes, "device": dev,
        "model_config": model_cfg, "trainer": to_plain(dataclasses.asdict(tcfg)), "features": corpus.features,
    }
    log(f"training {model} on {dataset} [{','.join(mods)}] on {dev}: protocol {protocol}, select on {select_on}, "
        f"seeds {','.join(map(str, seed_t))}, up to {tcfg.epochs} epochs")
    records = run_protocol(model, model_cfg, corpus, mods, protocol, select_on, seed_t, tcfg, dev, log)
    run_dir = Path(out) if out is not None else default_run_dir(model, dataset)
    metrics = write_run(run_dir, resolved, records, corpus, corpus.task)
    log(format_summary(metrics))
    log(f"run directory: {run_dir}")
    return run_dir, metrics


def train(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model: ts-gcl, ar-iigcn, jv-icl, deepmsi-mer, mlp, bigru.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Prepared dataset name (mer-pipe prepare).")] = None,
    modalities: Annotated[Optional[str], typer.Option(help="Comma list of t,a,v (default t,a,v).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma list of seeds (default 0,1,2); metrics are mean ± std over them.")] = None,
    select_on: Annotated[Optional[str], typer.Option("--select-on", help="Model selection on dev (default) or test (the papers' habit; flagged in every output).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="standard (default) or kfold10-utterance (DeepMSI's pooled 10-fold CV).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default: the model's trainer default).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML with model_config:/trainer: sections (a run's config.yaml works).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY=VALUE, e.g. trainer.lr=3e-4, model.dropout=0.3 (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/DATASET-MODEL-TIME).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (default), cpu or cuda.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default: $MER_PIPE_CACHE, else ~/.cache/mer-pipe).")] = None,
    slot: Annotated[Optional[list[str]], typer.Option("--slot", help="Read a modality from another lock slot, e.g. a=a_w2v (repeatable).")] = None,
) -> None:
    """Train a model on cached features; writes config.yaml, metrics.json, predictions.csv, plots and checkpoint.pt."""
    train_run(model, dataset, modalities=modalities, seeds=seeds, select_on=select_on, protocol=protocol,
              epochs=epochs, config_file=config, sets=set_ or (), out=out, device=device, cache_dir=cache_dir,
              slots=slot, log=typer.echo)


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by mer-pipe train.")],
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default: $MER_PIPE_CACHE, else ~/.cache/mer-pipe).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (default), cpu or cuda.")] = None,
) -> None:
    """Reload a run's checkpoint and features, re-score its test set and check the stored metrics are reproduced."""
    from mer_pipe.pipeline.train.evaluate import evaluate_run
    from mer_pipe.common.devices import resolve_device

    res = evaluate_run(run_dir, cache_dir, resolve_device(device), log=typer.echo)
    a = res["aggregate"]["test"]
    typer.echo(f"test: acc {a['accuracy']['mean']:.4f} ± {a['accuracy']['std']:.4f}  "
               f"W-F1 {a['weighted_f1']['mean']:.4f} ± {a['weighted_f1']['std']:.4f}")
    if not res["reproduced"]:
        typer.echo("stored test metrics were NOT reproduced exactly (different device or library versions?)", err=True)
        raise typer.Exit(1)
    typer.echo("stored test metrics reproduced exactly")


def demo_run(out: Path, log: Callable[[str], None] = print, device: str | None = "cpu") -> tuple[Path, dict[str, Any]]:
    """synth -> prepare -> offline features -> train (see DEMO); returns (run dir, metrics)."""
    import time

    from mer_pipe.pipeline.extract.executors import ExecutorConfig
    from mer_pipe.pipeline.extract.run import extract_features
    from mer_pipe.pipeline.corpus.prepare import prepare
    from mer_pipe.pipeline.extract.presets import resolve_slots
    from mer_pipe.pipeline.corpus.synth import synthesize

    out = Path(out).expanduser().resolve()
    cache = out / "cache"
    t0 = time.perf_counter()
    log(f"[1/4] synthesising a MELD-like corpus ({DEMO['dialogues']} dialogues, planted cues) in {out / 'corpus'}")
    res = synthesize("meld", out / "corpus", dialogues=DEMO["dialogues"], seed=0)
    log(f"[2/4] preparing it as dataset 'synth-meld' in {cache}")
    report = prepare("meld", res.root, name="synth-meld", cache_dir=cache)
    log(f"      {report.summary().splitlines()[0] if report.summary() else ''}")
    log("[3/4] extracting offline features (MiniLM text, openSMILE audio, tiny Swin video) into the cache")
    slots = resolve_slots("offline", only="t,a,v", cache_root=cache)
    # The default executor: a local dask cluster (falls back to in-process if it cannot start).
    summary = extract_features("synth-meld", slots, cache_dir=cache, device="cpu", progress=False,
                               executor=ExecutorConfig(kind="dask", workers=2))
    log("\n".join("      " + line for line in summary.format().splitlines()))
    log(f"[4/4] training {DEMO['model']} ({DEMO['seeds']} seeds, {DEMO['epochs']} epochs, selection on dev)")
    run_dir, metrics = train_run(DEMO["model"], "synth-meld", seeds=DEMO["seeds"], epochs=DEMO["epochs"],
                                 sets=DEMO["sets"], out=out / "run", device=device, cache_dir=cache, log=log)
    log(f"demo finished in {time.perf_counter() - t0:.0f}s; inspect {run_dir} "
        f"(metrics.json, confusion.png, curves.png), re-score with `mer-pipe evaluate {run_dir} --cache-dir {cache}`")
    return run_dir, metrics


def demo(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the corpus, cache and run (default ./demo).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu (default) or cuda.")] = None,
) -> None:
    """The whole pipeline offline in a few minutes: synthetic MELD-like corpus -> features -> train -> metrics."""
    demo_run(out if out is not None else Path("demo"), log=typer.echo, device=device or "cpu")
