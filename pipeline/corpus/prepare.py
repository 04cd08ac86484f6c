"""`prepare`: run a corpus recipe and write the manifest, dataset.json and prepare_report.json to the cache.

A recipe never crashes on a damaged corpus: every problem (missing or orphan media, duplicate ids,
empty texts, malformed rows, count mismatches, undecodable clips) lands in the `PrepareReport`, the rest
is prepared. Only a layout it cannot recognise at all is an error.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_pipe.common.errors import ConfigError
from mer_pipe.common.files import write_json_atomic

from .hints import check_dataset_name
from .manifest import SPLITS, Utterance, dataset_dir, manifest_digest, validate_utterances, write_manifest


@dataclass
class PrepareReport:
    """What a recipe found. Lists hold utterance ids (or file/line for rows) so problems can be traced."""

    name: str
    recipe: str
    root: str
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing_media: list[dict[str, str]] = field(default_factory=list)  # {id, kind: video|audio, path}
    bad_media: list[dict[str, str]] = field(default_factory=list)  # {id, path, reason}: undecodable/truncated/...
    orphan_media: list[str] = field(default_factory=list)  # paths relative to root with no annotation row
    duplicate_ids: list[str] = field(default_factory=list)
    empty_texts: list[str] = field(default_factory=list)
    malformed_rows: list[dict[str, Any]] = field(default_factory=list)  # {file, line, reason}
    count_mismatches: list[dict[str, Any]] = field(default_factory=list)  # {dialogue_id, expected, found}
    skipped_dialogues: list[dict[str, str]] = field(default_factory=list)  # {dialogue_id, reason}
    notes: list[str] = field(default_factory=list)
    probed: bool = False
    subset: dict[str, Any] | None = None  # `--train-utterances N --subset-seed S` (subset.py): request and result
    n_utterances: int = 0
    n_dialogues: int = 0

    # --- recording helpers used by the recipes --------------------------------------------------------
    def missing(self, utt_id: str, kind: str, path: str) -> None:
        self.missing_media.append({"id": utt_id, "kind": kind, "path": path})

    def malformed(self, file: str, line: int, reason: str) -> None:
        self.malformed_rows.append({"file": file, "line": line, "reason": reason})

    def bad(self, utt_id: str, path: str, reason: str) -> None:
        self.bad_media.append({"id": utt_id, "path": path, "reason": reason})

    def count(self, utts: list[Utterance]) -> None:
        self.n_utterances = len(utts)
        self.n_dialogues = len({u.dialogue_id for u in utts})
        self.splits = {}
        for s in SPLITS:
            us = [u for u in utts if u.split == s]
            if us:
                self.splits[s] = {
                    "utterances": len(us),
                    "dialogues": len({u.dialogue_id for u in us}),
                    "classes": dict(Counter(u.label for u in us if u.label is not None)),
                }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def problems(self) -> int:
        return sum(
            len(x)
            for x in (self.missing_media, self.bad_media, self.orphan_media, self.duplicate_ids, self.empty_texts,
                      self.malformed_rows, self.count_mismatches, self.skipped_dialogues)
        )

    def summary(self, label_names: list[str] | None = None, show: int = 5) -> str:
        """A short human-readable summary (counts plus the first few ids of every problem)."""
        lines = [f"{self.name} ({self.recipe}) from {self.root}: {self.n_utterances} utterances in "
                 f"{self.n_dialogues} dialogues"]
        names = label_names or sorted({k for s in self.splits.values() for k in s["classes"]})
        for s, st in self.splits.items():
            cls = " ".join(f"{n}={st['classes'].get(n, 0)}" for n in names)
            lines.append(f"  {s:5s} {st['utterances']:6d} utts {st['dialogues']:5d} dialogues  {cls}")

        def item(title: str, xs: list, fmt) -> None:
            if xs:
                shown = ", ".join(fmt(x) for x in xs[:show]) + (f", ... (+{len(xs) - show})" if len(xs) > show else "")
                lines.append(f"  {title}: {len(xs)}: {shown}")

        item("missing media", self.missing_media, lambda x: f"{x['id']} ({x['kind']})")
        item("bad media", self.bad_media, lambda x: f"{x['id']} ({x['reason']})")
        item("orphan media (no annotation row)", self.orphan_media, str)
        item("duplicate ids (later rows skipped)", self.duplicate_ids, str)
        item("empty texts", self.empty_texts, str)
        item("malformed rows (skipped)", self.malformed_rows, lambda x: f"{x['file']}:{x['line']} {x['reason']}")
        item("count mismatches", self.count_mismatches,
             lambda x: f"{x['dialogue_id']} expected {x['expected']} found {x['found']}")
        item("skipped dialogues", self.skipped_dialogues, lambda x: f"{x['dialogue_id']} ({x['reason']})")
        for n in self.notes:
            lines.append(f"  note: {n}")
        if not self.probed and self.recipe not in ("manifest", "pickle", "parquet"):  # imports carry no media
            lines.append("  media were not decoded; add --probe to find undecodable or truncated clips")
        return "\n".join(lines)


def prepare(
    recipe: str,
    root: str | Path | None,
    name: str | None = None,
    cache_dir: str | Path | None = None,
    manifest_file: str | Path | None = None,
    probe: bool = False,
    allow_outside_root: bool = False,
    train_utterances: int | None = None,
    subset_seed: int | None = None,
) -> PrepareReport:
    """Run recipe `recipe` on corpus `root` and write `<cache>/<name>/{manifest.jsonl,dataset.json,prepare_report.json}`.

    `name` defaults to the recipe name; `manifest_file` is the user JSONL for the `manifest` recipe;
    `probe` decodes every media file to report undecodable, truncated or audio-less clips.
    Media paths must stay inside `root` (no `..`, no absolute paths elsewhere) unless `allow_outside_root`.
    `train_utterances` keeps about that many training utterances in whole dialogues, chosen with `subset_seed`
    (default 0; subset.py), dev and test untouched; the request and the result go to dataset.json and the report.
    """
    from .recipes import get_recipe

    rec = get_recipe(recipe)
    if subset_seed is not None and train_utterances is None:
        raise ConfigError("--subset-seed needs --train-utterances N (the size of the training subset), e.g. "
                          "--train-utterances 5000 --subset-seed 0")
    name = check_dataset_name(name or rec.name)  # the feature store's dataset-name rule, plus a length limit
    if root is None:
        if manifest_file is None:
            raise ConfigError(f"prepare {recipe} needs --root DIR: the corpus folder ({rec.layout})")
        root = Path(manifest_file).expanduser().resolve().parent
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a folder; point it at the corpus ({rec.layout})")
    report = PrepareReport(name=name, recipe=rec.name, root=str(root), probed=probe)
    utts = rec.collect(root, report, probe=probe, manifest_file=manifest_file)
    if not utts:
        raise ConfigError(f"recipe {rec.name!r} found no utterances under {root}; expected {rec.layout}")
    validate_utterances(utts, f"recipe {rec.name}")  # a recipe bug must not reach the cache
    if train_utterances is not None:  # whole training dialogues, seeded; dev and test untouched
        from .subset import subset_note, subset_train

        utts, report.subset = subset_train(utts, train_utterances, 0 if subset_seed is None else subset_seed)
        report.notes.append(subset_note(report.subset))
    if not allow_outside_root:
        _check_inside(root, utts)
    report.count(utts)
    label_names = list(rec.labels) if rec.labels else _labels_from(utts)

    out = dataset_dir(name, cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", utts)
    info = {"name": name, "recipe": rec.name, "root": str(root), "label_names": label_names,
            "manifest_digest": manifest_digest(utts), **({"subset": report.subset} if report.subset else {})}
    _write_json(out / "dataset.json", info)
    _write_json(out / "prepare_report.json", report.to_dict())
    return report


def _check_inside(root: Path, utts: list[Utterance]) -> None:
    """Refuse media paths that leave the corpus root lexically (`..`, absolute paths elsewhere). Symlinks inside
    the root are followed on purpose: corpora are often assembled from links to other disks."""
    base = os.path.normpath(root)
    for u in utts:
        for kind in ("video", "audio"):
            rel = getattr(u, kind)
            if rel is None:
                continue
            full = os.path.normpath(os.path.join(base, rel))
            if os.path.commonpath([base, full]) != base:
                raise ConfigError(f"utterance {u.id!r}: {kind} path {rel!r} resolves to {full}, outside --root {root}; "
                                  "move the media under the root, or pass --allow-outside-root if that is intended")


def _labels_from(utts: list[Utterance]) -> list[str]:
    ids = {u.label_id: u.label for u in utts if u.label is not None}
    return [ids.get(i, f"class{i}") for i in range(max(ids) + 1)] if ids else []


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, indent=1, sort_keys=False)
