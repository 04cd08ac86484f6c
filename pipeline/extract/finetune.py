"""The fine-tune stage: the first edge of the feature DAG (`finetune t -> extract t`).

A slot with `--set t.finetune=true` (options `--set t.finetune.lr=3e-5`, ...; see
`extractors.finetune.FinetuneConfig`) is extracted from an encoder fine-tuned on the dataset's
emotion labels instead of the frozen base:

* **Key** of a fine-tune = feature_key("finetune", version, {base weights identity, fine-tune config
  (crossfit excluded), extractor, label names, digest of the train/dev labels and of every utterance's
  split, fold}, manifest digest). Test labels are never read: a test label can change neither this key
  nor the features. A changed train/dev label or setting re-keys the fine-tune.
* **Edge**: the extraction stage of that slot hashes `{extractor config, model: "<finetune>", weights:
  {"finetune": key}, inputs}` with `upstream=key`, so it is re-keyed with the fine-tune and with nothing
  else. The extraction key is known before the checkpoint exists; planning never trains.
* **Checkpoint** `<root>/<dataset>/finetune/<key>/` (cache/checkpoints.py) appears by one rename when
  training has finished; a killed fine-tune leaves only `.work-<key>/`, which a rerun resumes (after the
  last finished epoch) and extraction never reads. Its finetune.json holds the kept encoder's W-F1 on train next
  to dev (and held-out dialogues for a fold) and the dialogues it trained on: finetune_scores.py (issue 19).
* **Cross-fitting** (`crossfit=N`): the training dialogues are dealt into N folds (seeded); fold k's
  encoder trains on the other folds (its own cached stage) and extracts fold k's training utterances;
  dev/test (and the model the encoder's own dev score describes) come from the encoder trained on all of
  train. The combined feature set names every fold key in its spec (`finetune_keys`).
* **Where it runs**: in this process (GPU when --device allows), or, with `--scheduler`, as one task on
  the dask cluster, so the checkpoint lands in the shared cache and remote workers then load it.

By role: this module binds slots to stages (config, inputs, keys; planning, never training); finetune_plan.py
says which stages a plan needs and prints the DAG; finetune_run.py trains; crossfit.py assembles cross-fitted
sets through the extraction's shard runner. The types (FinetuneStage, CrossfitBinding, Plan) are in stages.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from mer_pipe.common.errors import ConfigError

from .presets import SlotSpec
from .stages import CrossfitBinding, FinetuneStage, Prepared

STAGE = "finetune"
VERSION = "1"
SPLITS_READ = ("train", "dev")  # the only splits whose labels a fine-tune reads


# --- config and inputs ---------------------------------------------------------------------------
def finetune_config(spec: SlotSpec):
    """The slot's FinetuneConfig (typed, errors name `SLOT.finetune.KEY`), or None when off."""
    from mer_pipe.extractors.finetune import FinetuneConfig

    if spec.finetune is None:
        return None
    return FinetuneConfig.from_dict(dict(spec.finetune), prefix=f"{spec.slot}.finetune")


def context_texts(utts: Sequence[Any], context: int, sep: str) -> dict[str, str]:
    """utterance id -> encoder input: the text alone (context 0), else the K previous turns of its
    dialogue and itself as "speaker: text", oldest first, joined by `sep`."""
    if context <= 0:
        return {u.id: u.text for u in utts}
    by_dia: dict[str, list[Any]] = {}
    for u in utts:
        by_dia.setdefault(u.dialogue_id, []).append(u)
    out = {}
    for turns in by_dia.values():
        turns = sorted(turns, key=lambda u: u.index)
        for i, u in enumerate(turns):
            window = turns[max(0, i - context): i + 1]
            out[u.id] = sep.join(f"{t.speaker}: {t.text}" for t in window)
    return out


def labels_digest(utts: Sequence[Any], train_ids: Sequence[str], dev_ids: Sequence[str]) -> str:
    """sha256 over every utterance's (id, split) and the labels of the train/dev utterances used.
    Test labels never enter it (nor anything else of the fine-tune)."""
    used = set(train_ids) | set(dev_ids)
    h = hashlib.sha256()
    for u in utts:
        label = u.label_id if (u.id in used and u.split in SPLITS_READ) else None
        h.update(json.dumps([u.id, u.split, label], separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def crossfit_folds(utts: Sequence[Any], n_folds: int, seed: int) -> dict[str, int]:
    """Training dialogue -> fold (`corpus.folds`), returned per training utterance id."""
    from mer_pipe.pipeline.corpus.folds import dialogue_folds

    train = [u for u in utts if u.split == "train" and u.label_id is not None]
    fold_of_dia = dialogue_folds([u.dialogue_id for u in train], n_folds, seed, option=f"finetune.crossfit={n_folds}",
                                 fix=f"use crossfit <= {len({u.dialogue_id for u in train})} or 0")
    return {u.id: fold_of_dia[u.dialogue_id] for u in utts if u.dialogue_id in fold_of_dia and u.split == "train"}


def _base_name(ext: Any, ref: str) -> str:
    if getattr(ext.config, "model", "x") is None:
        return "MiniLM (packaged)"
    p = Path(ref).expanduser()
    return p.name if p.exists() else ref


# --- binding slots to stages (planning; never trains) ------------------------------------------------
def bind_finetune_slots(dataset: str, slots: Sequence[SlotSpec], prepared: Prepared, root: Path, *,
                        verify: bool = False) -> tuple[list[SlotSpec], list[FinetuneStage], list[CrossfitBinding]]:
    """Replace every fine-tuned slot by the extraction of its (future) checkpoint, keyed through the
    fine-tune key; returns the new slots, the fine-tune stages and the cross-fit bindings. `verify`:
    a checkpoint counts as complete only when its files match the checksums recorded when it appeared
    (otherwise that is checked only before the checkpoint is read again: `needed_stages`)."""
    from mer_pipe.cache.checkpoints import checkpoint_dir, is_complete, problem
    from mer_pipe.cache.keys import feature_key
    from mer_pipe.cache.store import FeatureStore
    from mer_pipe.extractors import build_extractor

    store = FeatureStore(root)
    utts, digest = prepared.utts, prepared.digest
    label_names = list(prepared.info.get("label_names") or [])
    out_slots: list[SlotSpec] = []
    stages: list[FinetuneStage] = []
    bindings: list[CrossfitBinding] = []
    for spec in slots:
        cfg = finetune_config(spec)
        if cfg is None:
            out_slots.append(spec)
            continue
        ext = build_extractor(spec.extractor, dict(spec.config))
        if ext.modality not in ("text", "audio"):
            raise ConfigError(f"--set {spec.slot}.finetune: slot {spec.slot!r} uses the {ext.modality} extractor "
                              f"{spec.extractor!r}; only text and wav2vec2-family audio slots can be fine-tuned "
                              "(video stays frozen); drop that option")
        if ext.modality == "audio" and spec.extractor != "wav2vec2":
            raise ConfigError(f"--set {spec.slot}.finetune: audio fine-tuning needs the wav2vec2 extractor, slot "
                              f"{spec.slot!r} uses {spec.extractor!r}; e.g. --set a_w2v.finetune=true")
        if ext.modality == "audio" and cfg.context:
            raise ConfigError(f"{spec.slot}.finetune.context={cfg.context}: context turns are text; "
                              f"use --set {spec.slot}.finetune.context=0 for an audio slot")
        ref = ext._model_ref()
        identity = ext.weights_identity()  # a bad local path fails here, naming it
        train_all = [u.id for u in utts if u.split == "train" and u.label_id is not None]
        dev_ids = tuple(u.id for u in utts if u.split == "dev" and u.label_id is not None)
        if not train_all:
            raise ConfigError(f"--set {spec.slot}.finetune: dataset {dataset!r} has no labelled training "
                              "utterances to fine-tune on; prepare a corpus with a train split")

        def stage(train_ids: Sequence[str], fold: tuple[int, int] | None) -> FinetuneStage:
            ldig = labels_digest(utts, train_ids, dev_ids)
            key = feature_key(STAGE, VERSION, {
                "base": identity, "extractor": spec.extractor, "config": cfg.key_dict(),
                "label_names": label_names, "labels": ldig, "fold": list(fold) if fold else None,
            }, digest)
            path = checkpoint_dir(store, dataset, key)
            return FinetuneStage(
                dataset=dataset, slot=spec.slot, extractor=spec.extractor, modality=ext.modality, base_ref=ref,
                revision=getattr(ext.config, "revision", None), base_name=_base_name(ext, ref),
                base_identity=identity, config=cfg.to_dict(), fold=fold, key=key, path=str(path),
                train_ids=tuple(train_ids), dev_ids=dev_ids, labels_digest=ldig, manifest_digest=digest,
                complete=is_complete(path) and (not verify or problem(path) is None))

        main = stage(train_all, None)
        stages.append(main)
        inputs = {"context": cfg.context, "sep": cfg.context_sep} if cfg.context else {}
        defaults = {"pooling": cfg.pooling, "max_length": cfg.max_length} if ext.modality == "text" else {}
        config = {**defaults, **{k: v for k, v in spec.config.items() if k != "revision"}, "model": main.path}
        if cfg.crossfit:
            fold_of = crossfit_folds(utts, cfg.crossfit, cfg.seed)
            fold_stages = [stage([i for i in train_all if fold_of.get(i) != k], (k, cfg.crossfit))
                           for k in range(cfg.crossfit)]
            stages.extend(fold_stages)
            bindings.append(CrossfitBinding(spec.slot, main.key, tuple(s.key for s in fold_stages), fold_of))
        # the all-train extraction is an ordinary fine-tuned stage (shared with crossfit=0)
        out_slots.append(dataclasses.replace(spec, config=config, upstream=main.key, inputs=inputs, finetune=None))
    return out_slots, stages, bindings


def finetuned_configs(ext: Any, spec: SlotSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved config for the tasks, key config) of an extraction that reads a fine-tuned checkpoint.

    The task config carries the checkpoint path and no weights identity (the checkpoint may not exist
    yet when planning); the key config stands the fine-tune key in for the weights, so the extraction
    key is `feature_key(extractor, version, key config, manifest digest, upstream=fine-tune key)`."""
    from mer_pipe.extractors.base import WEIGHTS_KEY

    resolved = dataclasses.asdict(ext.config)
    key_cfg = {**resolved, "model": "<finetune>", WEIGHTS_KEY: {"finetune": spec.upstream},
               "inputs": dict(spec.inputs)}
    return resolved, key_cfg


def with_inputs(items: list[dict[str, Any]], utts: Sequence[Any], inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Text items with the encoder input of a context-K fine-tune ("speaker: text" turns)."""
    if not inputs.get("context"):
        return items
    texts = context_texts(utts, int(inputs["context"]), str(inputs.get("sep", " | ")))
    return [{**it, "text": texts[it["id"]]} for it in items]
