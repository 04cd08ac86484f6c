"""`mer-pipe prepare pickle`: a published ERC feature pickle -> a prepared dataset with locked feature sets.

The manifest (dialogues, order, speakers, text, labels, splits; media null) and dataset.json are written
as `prepare` writes them; every feature element becomes one feature set in the store (`t`, `a`, `v`, and
COSMIC's extra RoBERTa layers as `t_r2`..`t_r4`), written as a feature run writes them (spec.json, shards,
lock), so `mer-pipe train` reads them unchanged. Weights identity = the sha256 of the pickle: the same
file gives the same keys, a changed file new ones.
"""
from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import ConfigError, ManifestError
from mer_pipe.common.files import write_json_atomic
from mer_pipe.pipeline.corpus.manifest import (
    Utterance,
    dataset_dir,
    manifest_digest,
    validate_utterances,
    write_manifest,
)
from mer_pipe.pipeline.corpus.prepare import PrepareReport

from .featuresets import write_imported_sets
from .layouts import Conversations
from .splits import SPLITS, assign_splits, meld_names, sentiment_names

_SES_RE = re.compile(r"^Ses\d\d")


def label_names(variant: str) -> tuple[str, ...]:
    from mer_pipe.pipeline.corpus.recipes import iemocap, meld

    return iemocap.LABELS if variant == "iemocap" else meld.LABELS


def _speaker(raw: Any, variant: str, dialogue_id: str) -> str:
    if variant == "iemocap":
        # IEMOCAP's actor of that session, as the iemocap recipe names it (Ses01 + F/M)
        return f"{dialogue_id[:5]}{raw}" if raw in ("M", "F") and _SES_RE.match(dialogue_id) else str(raw)
    return f"speaker{raw}" if raw >= 0 else "unknown"


def _utterance_ids(conv: Conversations, names: dict[Hashable, str]) -> dict[Hashable, list[str]]:
    """The file's own utterance ids when they are unique strings (IEMOCAP 'Ses01F_impro01_F000', or ids a
    mer-pipe export wrote); else '<variant>/<dialogue>_utt<n>' with n the file's per-dialogue id or position."""
    own = [u for d in conv.dialogues for u in (d.utt_ids or [None] * d.n)]
    if all(isinstance(u, str) and u for u in own) and len(set(own)) == len(own):
        return {d.key: list(d.utt_ids or ()) for d in conv.dialogues}
    out = {}
    for d in conv.dialogues:
        ints = d.utt_ids if d.utt_ids and all(isinstance(u, int) for u in d.utt_ids) else None
        nums = ints if ints and len(set(ints)) == len(ints) else list(range(d.n))
        out[d.key] = [f"{conv.layout.variant}/{names[d.key]}_utt{n}" for n in nums]
    return out


def _sentiment(sent_map: dict[int, str] | None, ids: list[int] | None, j: int) -> str | None:
    if sent_map is None or ids is None:
        return None
    return sent_map.get(ids[j])


def build_utterances(conv: Conversations, report: PrepareReport) -> tuple[list[Utterance], list, dict]:
    """(utterances in file order, kept dialogue keys, interop facts for the report)."""
    variant, labels = conv.layout.variant, label_names(conv.layout.variant)
    meld = meld_names(conv) if variant == "meld" else None
    names = meld or {d.key: str(d.key) for d in conv.dialogues}
    split_of, rule = assign_splits(conv, meld)
    sent_map, sent_note = sentiment_names(conv, labels) if variant == "meld" else (None, "")
    uids = _utterance_ids(conv, names)
    utts: list[Utterance] = []
    kept = []
    for d in conv.dialogues:
        if d.key not in split_of:
            report.skipped_dialogues.append({"dialogue_id": names[d.key], "reason": "in no split list of the file"})
            continue
        kept.append(d.key)
        did, speakers = names[d.key], {}
        for j in range(d.n):
            if not 0 <= d.labels[j] < len(labels):
                raise ManifestError(f"dialogue {did!r} utterance {j}: label id {d.labels[j]} is outside the "
                                    f"{len(labels)} {variant} classes ({', '.join(labels)})")
            spk = _speaker(d.speakers[j], variant, did)
            utts.append(Utterance(
                id=uids[d.key][j], dataset=variant, dialogue_id=did, index=j, speaker=spk,
                speaker_idx=speakers.setdefault(spk, len(speakers)), text=d.sentences[j], video=None, audio=None,
                video_segment=None, audio_segment=None, start=None, end=None, split=split_of[d.key],
                label=labels[d.labels[j]], label_id=d.labels[j], sentiment=_sentiment(sent_map, d.sentiment, j)))
            if not d.sentences[j].strip():
                report.empty_texts.append(utts[-1].id)
    missing = [k for s in SPLITS for k in conv.splits.get(s) or () if k not in names]
    if missing:
        report.notes.append(f"{len(missing)} dialogue ids in the split lists have no data (e.g. {missing[0]!r}); skipped")
    facts = {"dev_rule": rule, "dialogue_ids": "official MELD numbering" if meld else "the file's keys"}
    report.notes.append(f"dev split: {rule['rule']}: {rule['detail']}")
    report.notes.extend(conv.notes + ([sent_note] if sent_note else []))
    return utts, kept, facts


def default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._+=-]", "-", path.stem).lstrip(".-_+=")
    return name or "pickle"


@dataclass
class ImportResult:
    report: PrepareReport
    info: dict[str, Any]
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)  # slot -> lock entry (+ element)


def import_pickle(path: str | Path, name: str | None = None, cache_dir: str | Path | None = None,
                  layout: str | None = None) -> ImportResult:
    """Read `path` safely, detect (or check `layout`), write the prepared dataset and its locked feature sets."""
    from mer_pipe.cache.store import FeatureStore, check_name
    from mer_pipe.pipeline.corpus.manifest import cache_root

    from .layouts import detect
    from .parse import read_conversations
    from .pickles import load_pickle

    path = Path(path).expanduser().resolve()
    obj, sha = load_pickle(path)
    lay = detect(obj, str(path), layout)
    conv = read_conversations(obj, lay, str(path))
    del obj
    name = name or default_name(path)
    try:
        check_name("dataset", name)
    except ConfigError:
        raise ConfigError(f"--name {name!r} is not a usable dataset name; start with a letter or digit, then "
                          "letters, digits, '.', '_', '+', '=' or '-'") from None
    report = PrepareReport(name=name, recipe="pickle", root=str(path.parent))
    utts, kept, facts = build_utterances(conv, report)
    if not utts:
        raise ManifestError(f"{path}: no dialogue of the file is in its split lists; nothing to import")
    validate_utterances(utts, f"pickle {path.name}")
    report.count(utts)
    digest = manifest_digest(utts)
    labels = list(label_names(lay.variant))
    out = dataset_dir(name, cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", utts)
    info = {"name": name, "recipe": "pickle", "root": str(path.parent), "label_names": labels,
            "manifest_digest": digest, "source": {"file": str(path), "sha256": sha, "layout": lay.name,
                                                  "variant": lay.variant}}
    write_json_atomic(out / "dataset.json", info, indent=1, sort_keys=False)
    store = FeatureStore(cache_root(cache_dir))
    slots = write_imported_sets(store, name, conv, kept, [u.id for u in utts], sha, digest, report.notes)
    facts.update({"file": str(path), "sha256": sha, "layout": lay.name, "loader": lay.loader,
                  "slots": {s: {k: e[k] for k in ("element", "key", "dim")} for s, e in slots.items()}})
    write_json_atomic(out / "prepare_report.json", {**report.to_dict(), "interop": facts}, indent=1, sort_keys=False)
    return ImportResult(report=report, info=info, slots=slots)
