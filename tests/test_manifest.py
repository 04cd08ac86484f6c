"""Manifest schema: round trip, digest, row validation with line numbers, prepared-dataset loading."""
import dataclasses
import json

import pytest

from mer_pipe.common.errors import CacheError, ManifestError
from mer_pipe.pipeline.corpus.manifest import (
    FIELDS,
    Utterance,
    cache_root,
    load_dataset,
    manifest_digest,
    read_manifest,
    write_manifest,
)


def _utts() -> list[Utterance]:
    base = dict(dataset="toy", speaker="A", speaker_idx=0, video="clips/a.mp4", audio="clips/a.mp4",
                video_segment=None, audio_segment=None, start=None, end=None, split="train", sentiment="neutral")
    return [
        Utterance(id="toy/d0_u0", dialogue_id="d0", index=0, text="hi", label="neutral", label_id=0, **base),
        Utterance(**{**base, "id": "toy/d0_u1", "dialogue_id": "d0", "index": 1, "text": "wow", "speaker": "B",
                     "speaker_idx": 1, "label": "joy", "label_id": 1, "video_segment": (0.5, 2.0),
                     "audio": None, "start": 1.0, "end": 2.5, "sentiment": "positive"}),
        Utterance(**{**base, "id": "toy/d1_u0", "dialogue_id": "d1", "index": 0, "text": "", "label": None,
                     "label_id": None, "split": "test", "sentiment": None}),
    ]


def test_fields_follow_the_contract():
    assert FIELDS == ("id", "dataset", "dialogue_id", "index", "speaker", "speaker_idx", "text", "video", "audio",
                      "video_segment", "audio_segment", "start", "end", "split", "label", "label_id", "sentiment")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _utts()[0].text = "x"


def test_round_trip(tmp_path):
    utts = _utts()
    write_manifest(tmp_path / "m.jsonl", utts)
    back = read_manifest(tmp_path / "m.jsonl")
    assert back == utts
    assert back[1].video_segment == (0.5, 2.0)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows[1]["video_segment"] == [0.5, 2.0] and list(rows[0]) == list(FIELDS)


def test_digest_covers_media_and_text_not_labels():
    utts = _utts()
    d = manifest_digest(utts)
    assert d == manifest_digest(list(utts))
    relabelled = [dataclasses.replace(u, label="anger", label_id=5, split="dev") if u.label else u for u in utts]
    assert manifest_digest(relabelled) == d
    assert manifest_digest([dataclasses.replace(utts[0], text="hello")] + utts[1:]) != d
    assert manifest_digest([dataclasses.replace(utts[1], video_segment=(0.5, 2.1))] + [utts[0], utts[2]]) != d
    assert manifest_digest(utts[::-1]) != d  # order is part of the identity (shards are manifest slices)


def _write_rows(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda r: r.pop("speaker"), "missing field(s) speaker"),
        (lambda r: r.update(extra=1), "unknown field(s) extra"),
        (lambda r: r.update(split="val"), "'split'"),
        (lambda r: r.update(index=-1), "'index'"),
        (lambda r: r.update(video_segment=[2.0, 1.0]), "'video_segment'"),
        (lambda r: r.update(label_id=None), "both be set or both be null"),
        (lambda r: r.update(sentiment="happy"), "'sentiment'"),
        (lambda r: r.update(text=None), "'text'"),
    ],
)
def test_bad_row_names_line_and_field(tmp_path, mutate, expect):
    rows = [u.to_dict() for u in _utts()]
    mutate(rows[1])
    _write_rows(tmp_path / "m.jsonl", rows)
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path / "m.jsonl")
    assert "m.jsonl:2" in str(err.value) and expect in str(err.value)


def test_bad_json_and_cross_row_checks(tmp_path):
    rows = [u.to_dict() for u in _utts()]
    _write_rows(tmp_path / "a.jsonl", [rows[0], "{not json", rows[2]])
    with pytest.raises(ManifestError, match=r"a\.jsonl:2: not valid JSON"):
        read_manifest(tmp_path / "a.jsonl")
    _write_rows(tmp_path / "b.jsonl", [rows[0], {**rows[1], "id": rows[0]["id"]}])
    with pytest.raises(ManifestError, match="duplicate utterance id 'toy/d0_u0'"):
        read_manifest(tmp_path / "b.jsonl")
    _write_rows(tmp_path / "c.jsonl", [rows[0], {**rows[1], "index": 2}])
    with pytest.raises(ManifestError, match="dialogue 'd0' has indices"):
        read_manifest(tmp_path / "c.jsonl")
    _write_rows(tmp_path / "d.jsonl", [rows[0], {**rows[1], "label": "neutral"}])
    with pytest.raises(ManifestError, match="maps label 'neutral' to id 1"):
        read_manifest(tmp_path / "d.jsonl")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_cache_root_and_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_PIPE_CACHE", str(tmp_path / "env"))
    assert cache_root() == (tmp_path / "env").resolve()
    assert cache_root(tmp_path / "x") == (tmp_path / "x").resolve()
    with pytest.raises(CacheError, match=r"mer-pipe prepare meld --root CORPUS_DIR --name meld"):
        load_dataset("meld")


def test_load_dataset_detects_edits(tmp_path):
    utts = _utts()
    d = tmp_path / "toy"
    write_manifest(d / "manifest.jsonl", utts)
    info = {"name": "toy", "recipe": "manifest", "root": str(tmp_path), "label_names": ["neutral", "joy"],
            "manifest_digest": manifest_digest(utts)}
    (d / "dataset.json").write_text(json.dumps(info))
    got_info, got = load_dataset("toy", tmp_path)
    assert got_info == info and got == utts
    write_manifest(d / "manifest.jsonl", [dataclasses.replace(utts[0], text="edited")] + utts[1:])
    with pytest.raises(CacheError, match="changed after prepare"):
        load_dataset("toy", tmp_path)
