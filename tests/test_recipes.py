"""Recipes on the real MELD CSVs and on synthetic MELD/IEMOCAP corpora with planted faults."""
import json
import re
import shutil
from collections import Counter

import pytest

from mer_pipe.common.errors import ConfigError, ManifestError
from mer_pipe.pipeline.corpus.manifest import load_dataset, read_manifest, write_manifest
from mer_pipe.pipeline.corpus.prepare import prepare
from mer_pipe.pipeline.corpus.recipes import RECIPES, get_recipe
from mer_pipe.pipeline.corpus.recipes.iemocap import CODES, load_splits, wav_problem
from mer_pipe.pipeline.corpus.recipes.meld import LABELS as MELD_LABELS
from mer_pipe.pipeline.corpus.recipes.meld import fix_mojibake, read_meld_csv
from mer_pipe.pipeline.corpus.synth import synthesize

# /work/shared/docs/models.md §1.1
MELD_TABLE = {
    "train": (1038, 9989, [4710, 1205, 268, 683, 1743, 271, 1109]),
    "dev": (114, 1109, [470, 150, 40, 111, 163, 22, 153]),
    "test": (280, 2610, [1256, 281, 50, 208, 402, 68, 345]),
}


def _by_dialogue(utts):
    out = {}
    for u in utts:
        out.setdefault(u.dialogue_id, []).append(u)
    return out


def _check_dialogue_invariants(utts):
    for dia, us in _by_dialogue(utts).items():
        assert [u.index for u in us] == list(range(len(us))), dia
        first = {}
        for u in us:
            first.setdefault(u.speaker, len(first))
            assert u.speaker_idx == first[u.speaker], (dia, u.id)


def test_registry_lists_choices():
    assert RECIPES.names() == ["iemocap", "manifest", "meld"]
    with pytest.raises(ConfigError, match="choose one of: iemocap, manifest, meld"):
        get_recipe("ravdess")


def test_real_meld_csvs(meld_csv, tmp_path):
    report = prepare("meld", meld_csv, cache_dir=tmp_path)
    info, utts = load_dataset("meld", tmp_path)
    assert info["label_names"] == list(MELD_LABELS) and info["recipe"] == "meld"
    for split, (n_dia, n_utt, classes) in MELD_TABLE.items():
        us = [u for u in utts if u.split == split]
        assert len(us) == n_utt and len({u.dialogue_id for u in us}) == n_dia
        counts = Counter(u.label_id for u in us)
        assert [counts[i] for i in range(7)] == classes
        assert report.splits[split]["utterances"] == n_utt
    assert "train/dia60" not in {u.dialogue_id for u in utts}
    assert len({u.id for u in utts}) == len(utts)
    _check_dialogue_invariants(utts)
    # 76 dialogues have Utterance_ID gaps: ids keep the original number, index stays consecutive
    gaps = [us for us in _by_dialogue(utts).values()
            if [int(u.id.rsplit("utt", 1)[1]) for u in us] != list(range(len(us)))]
    assert len(gaps) == 76
    assert all(u.video is None and u.audio is None for u in utts)  # CSVs only: prepared text-only
    assert any("text-only" in n for n in report.notes)
    assert max(len({u.speaker for u in us}) for us in _by_dialogue(utts).values()) == 9
    first = utts[0]
    assert first.id == "meld/train/dia0_utt0" and first.speaker == "Chandler" and "company’s" in first.text
    assert first.start == pytest.approx(976.059) and first.sentiment == "neutral"


def test_mojibake_and_cp1252(tmp_path):
    assert fix_mojibake("youâ€™re") == "you’re"
    assert fix_mojibake("Ã©tÃ©") == "été"
    assert fix_mojibake("plain ’ text") == "plain ’ text"
    csv = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n1,You\u2019re late,Ross,anger,negative,0,0\n"
    (tmp_path / "a.csv").write_bytes(csv.encode("cp1252"))
    assert read_meld_csv(tmp_path / "a.csv")[0].text == "You’re late"


def test_meld_csv_problems(tmp_path):
    (tmp_path / "train_sent_emo.csv").write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
        '1,"Hi, there",Ross,neutral,neutral,0,0\n'
        "2,Too few,Ross\n"
        "3,Bad id,Ross,joy,positive,zero,1\n"
        "4,Bad label,Ross,happy,positive,0,1\n"
        "5,Again,Joey,joy,positive,0,0\n"
        "6,,Joey,joy,positive,0,3\n"
        "7,Yo,Rachel,fear,negative,0,2\n"
    )
    rep = prepare("meld", tmp_path, name="toy", cache_dir=tmp_path / "c")
    lines = {(m["line"], m["file"]) for m in rep.malformed_rows}
    assert lines == {(3, "train_sent_emo.csv"), (4, "train_sent_emo.csv"), (5, "train_sent_emo.csv")}
    assert any("'happy' not one of" in m["reason"] for m in rep.malformed_rows)
    assert rep.duplicate_ids == ["meld/train/dia0_utt0"] and rep.empty_texts == ["meld/train/dia0_utt3"]
    _, utts = load_dataset("toy", tmp_path / "c")
    assert [(u.id, u.index, u.speaker_idx) for u in utts] == [
        ("meld/train/dia0_utt0", 0, 0), ("meld/train/dia0_utt2", 1, 1), ("meld/train/dia0_utt3", 2, 2)]
    assert utts[0].text == "Hi, there"


def test_wrong_layouts(tmp_path):
    with pytest.raises(ManifestError, match="train_sent_emo.csv"):
        prepare("meld", tmp_path)
    with pytest.raises(ManifestError, match="Session1..Session5"):
        prepare("iemocap", tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        prepare("meld", tmp_path / "nope")
    with pytest.raises(ConfigError, match="needs --root"):
        prepare("meld", None)
    with pytest.raises(ConfigError, match="needs --manifest"):
        prepare("manifest", tmp_path)


@pytest.fixture(scope="module")
def meld_corpus(tmp_path_factory):
    return synthesize("meld", tmp_path_factory.mktemp("synth") / "meld", dialogues=8, seed=3, faults=True)


@pytest.fixture(scope="module")
def iemocap_corpus(tmp_path_factory):
    return synthesize("iemocap", tmp_path_factory.mktemp("synth") / "iemocap", dialogues=8, seed=5, faults=True)


@pytest.mark.parametrize("probe", [False, True])
def test_synthetic_meld_faults(meld_corpus, tmp_path, probe):
    root = meld_corpus.root
    rep = prepare("meld", root, name="m", cache_dir=tmp_path, probe=probe)
    _, utts = load_dataset("m", tmp_path)
    faults = {f["kind"]: f for f in json.loads((root / "faults.json").read_text())["faults"]}
    assert set(faults) == {"missing_clip", "truncated_clip", "no_audio_clip", "orphan_clip", "malformed_row"}
    ids = {u.id: u for u in utts}
    assert [m["id"] for m in rep.missing_media] == [faults["missing_clip"]["id"]]
    assert ids[faults["missing_clip"]["id"]].video is None  # kept for its text and label, media null
    assert rep.orphan_media == [faults["orphan_clip"]["path"]]
    assert faults["orphan_clip"]["id"] not in ids
    assert [(m["file"], m["line"]) for m in rep.malformed_rows] == [("train_sent_emo.csv", faults["malformed_row"]["line"])]
    assert faults["malformed_row"]["id"] not in ids
    bad = {b["id"]: b["reason"] for b in rep.bad_media}
    if probe:
        assert bad[faults["no_audio_clip"]["id"]] == "no audio stream"
        assert "undecodable" in bad[faults["truncated_clip"]["id"]] or "truncated" in bad[faults["truncated_clip"]["id"]]
        assert len(bad) == 2
    else:
        assert bad == {}
    # everything else is prepared: every valid CSV row is an utterance, with its clip
    assert len(utts) == meld_corpus.utterances
    assert sum(u.video is not None for u in utts) == len(utts) - 1
    assert all((root / u.video).is_file() for u in utts if u.video)
    _check_dialogue_invariants(utts)
    for split, sub in (("train", "train/train_splits"), ("dev", "dev/dev_splits_complete"),
                       ("test", "test/output_repeated_splits_test")):
        us = [u for u in utts if u.split == split]
        assert us and all(u.id.startswith(f"meld/{split}/dia") for u in us)
        assert all(u.video == u.audio and u.video.startswith(sub) for u in us if u.video)
    assert all(MELD_LABELS[u.label_id] == u.label for u in utts)
    # the planted Utterance_ID gap (second train dialogue skips utt2): index stays consecutive
    d1 = [u for u in utts if u.dialogue_id == "train/dia1"]
    assert [u.id.rsplit("_", 1)[1] for u in d1][:3] == ["utt0", "utt1", "utt3"] and d1[2].index == 2


def test_meld_flat_layout_and_csvs_one_level_down(meld_corpus, tmp_path):
    root = tmp_path / "MELD.Raw"
    shutil.copytree(meld_corpus.root, root / "nested")
    for split, sub in (("train", "train_splits"), ("dev", "dev_splits_complete"), ("test", "output_repeated_splits_test")):
        shutil.move(root / "nested" / split / sub, root / sub)
    rep = prepare("meld", root, name="flat", cache_dir=tmp_path / "c")
    _, utts = load_dataset("flat", tmp_path / "c")
    assert len(utts) == meld_corpus.utterances and len(rep.missing_media) == 1
    assert all(re.match(r"^(train_splits|dev_splits_complete|output_repeated_splits_test)/dia\d+_utt\d+\.mp4$", u.video)
               for u in utts if u.video)


def test_synthetic_iemocap(iemocap_corpus, tmp_path):
    root = iemocap_corpus.root
    rep = prepare("iemocap", root, name="i", cache_dir=tmp_path, probe=True)
    info, utts = load_dataset("i", tmp_path)
    assert info["label_names"] == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    splits = load_splits()
    faults = {f["kind"]: f for f in json.loads((root / "faults.json").read_text())["faults"]}
    assert [m["id"] for m in rep.missing_media] == [faults["missing_wav"]["id"]]
    assert [b["id"] for b in rep.bad_media] == [faults["truncated_wav"]["id"]]
    assert "truncated" in rep.bad_media[0]["reason"]
    _check_dialogue_invariants(utts)
    kept_total = 0
    for dia, us in _by_dialogue(utts).items():
        split = next(s for s in ("train", "dev", "test") if dia in splits[s])
        assert all(u.split == split for u in us)
        sess = root / f"Session{int(dia[3:5])}"
        emo = (sess / "dialog" / "EmoEvaluation" / f"{dia}.txt").read_text()
        turns = re.findall(r"^\[([\d.]+) - ([\d.]+)\]\t(\S+)\t(\w+)\t", emo, flags=re.M)
        kept = sorted((float(a), u) for a, b, u, c in turns if c in CODES)
        assert len(kept) < len(turns)  # some xxx/sur/... turns were dropped
        assert [u.id for u in us] == [f"iemocap/{k[1]}" for k in kept]  # ordered by start time
        for u in us:
            assert u.speaker == dia[:5] + u.id.rsplit("_", 1)[1][0] and u.speaker in (dia[:5] + "F", dia[:5] + "M")
            assert u.video == f"Session{int(dia[3:5])}/dialog/avi/DivX/{dia}.avi"
            assert u.video_segment == (u.start, u.end) and u.audio_segment is None
            if u.id != faults["missing_wav"]["id"]:
                assert u.audio == f"Session{int(dia[3:5])}/sentences/wav/{dia}/{u.id.split('/')[1]}.wav"
        kept_total += len(us)
        assert {"dialogue_id": dia, "expected": splits["utterances_per_dialogue"][dia], "found": len(us)} in rep.count_mismatches
    assert kept_total == len(utts) and utts[0].sentiment is None
    missing = next(u for u in utts if u.id == faults["missing_wav"]["id"])
    assert missing.audio is None and missing.video is not None


def test_iemocap_unknown_dialogue_skipped(iemocap_corpus, tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(iemocap_corpus.root, root)
    sess = next(root.glob("Session*"))
    (sess / "dialog" / "EmoEvaluation" / "Ses01F_bogus01.txt").write_text(
        "[1.0 - 2.0]\tSes01F_bogus01_F000\tneu\t[2.5, 2.5, 2.5]\n[oops\n")
    rep = prepare("iemocap", tmp_path, name="i2", cache_dir=tmp_path / "c")  # sessions one level below
    assert {"dialogue_id": "Ses01F_bogus01", "reason": "not in the IEMOCAP-6 split lists"} in rep.skipped_dialogues
    _, utts = load_dataset("i2", tmp_path / "c")
    assert not any("bogus" in u.id for u in utts)


def test_wav_header_check(tmp_path, iemocap_corpus):
    wav = next(iemocap_corpus.root.rglob("*.wav"))
    assert wav_problem(wav) is None
    (tmp_path / "x.wav").write_bytes(b"not a wav at all")
    assert wav_problem(tmp_path / "x.wav") == "not a RIFF/WAVE file"


def test_user_manifest_recipe(meld_corpus, tmp_path):
    rep = prepare("meld", meld_corpus.root, name="src", cache_dir=tmp_path)
    _, utts = load_dataset("src", tmp_path)
    write_manifest(tmp_path / "mine.jsonl", utts)
    rep = prepare("manifest", meld_corpus.root, name="mine", cache_dir=tmp_path, manifest_file=tmp_path / "mine.jsonl",
                  probe=True)
    info, got = load_dataset("mine", tmp_path)
    assert got == utts and info["label_names"] == list(MELD_LABELS) and info["recipe"] == "manifest"
    assert {b["id"] for b in rep.bad_media} == {f["id"] for f in json.loads(
        (meld_corpus.root / "faults.json").read_text())["faults"] if f["detect"] == "probe"}
    # media relative to another root are missing: reported and set to null
    rep = prepare("manifest", tmp_path, name="mine2", cache_dir=tmp_path, manifest_file=tmp_path / "mine.jsonl")
    assert len(rep.missing_media) == 2 * sum(u.video is not None for u in utts)
    assert all(u.video is None for u in read_manifest(tmp_path / "mine2" / "manifest.jsonl"))
