"""Synthetic corpora: layout, media formats, determinism, and planted signal (informative, imperfect, complementary)."""
import csv
import json
import wave

import av
import numpy as np
import pytest

from mer_pipe.common.errors import ConfigError
from mer_pipe.pipeline.corpus.recipes.iemocap import LABELS as IEMOCAP_LABELS
from mer_pipe.pipeline.corpus.recipes.meld import CLIP_DIRS, LABELS as MELD_LABELS
from mer_pipe.pipeline.corpus.recipes.meld import read_meld_csv
from mer_pipe.pipeline.corpus.synth import synthesize
from mer_pipe.pipeline.corpus.synth.cues import CUE_WORDS, CueConfig, class_colour


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    return synthesize("meld", tmp_path_factory.mktemp("s") / "meld", dialogues=14, seed=1)


def _decode(path):
    """(mean RGB [3], frame count, fps, waveform float [S], sample rate, video codec, audio codec)."""
    with av.open(str(path)) as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
        fps, vcodec, acodec, rate = float(vs.average_rate), vs.codec_context.name, as_.codec_context.name, as_.rate
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return np.stack(frames).reshape(-1, 3).mean(0), len(frames), fps, audio, rate, vcodec, acodec, frames[0].shape


def _pitch_class(audio, rate, n):
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    band = (freqs > 100) & (freqs < 700)
    f = freqs[band][np.argmax(spec[band])]
    f0s = 160.0 * 2.0 ** (2.0 * np.arange(n) / n)
    return int(np.argmin(np.abs(np.log(f0s / f))))


def _text_class(text, labels):
    for i, name in enumerate(labels):
        if any(w in text.lower() for w in CUE_WORDS[name]):
            return i
    return -1


def test_meld_layout_media_and_signal(meld):
    root = meld.root
    assert json.loads((root / "faults.json").read_text())["faults"] == [] and meld.faults == []
    rows = {s: read_meld_csv(root / f"{s}_sent_emo.csv") for s in ("train", "dev", "test")}
    n_dia = {s: len({r.dialogue_id for r in rs}) for s, rs in rows.items()}
    assert n_dia == {"train": 10, "dev": 1, "test": 3} and sum(map(len, rows.values())) == meld.utterances
    with (root / "train_sent_emo.csv").open(newline="") as fh:
        assert next(csv.reader(fh))[:7] == ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                                            "Utterance_ID"]
    n = len(MELD_LABELS)
    colours = np.stack([class_colour(c, n) for c in range(n)])
    y, pv, pa, pt = [], [], [], []
    cfg = CueConfig()
    for split, rs in rows.items():
        names = {p.name for p in (root / split / CLIP_DIRS[split]).iterdir()}
        assert names == {f"dia{r.dialogue_id}_utt{r.utterance_id}.mp4" for r in rs}
        for r in rs:
            mean, n_frames, fps, audio, rate, vcodec, acodec, shape = _decode(
                root / split / CLIP_DIRS[split] / f"dia{r.dialogue_id}_utt{r.utterance_id}.mp4")
            assert (vcodec, acodec, fps, rate, shape) == ("h264", "aac", 10.0, 16000, (64, 64, 3))
            assert cfg.min_dur * 10 - 1 <= n_frames <= cfg.max_dur * 10 + 1
            assert cfg.min_dur - 0.2 < len(audio) / rate < cfg.max_dur + 0.3
            y.append(MELD_LABELS.index(r.emotion))
            pv.append(int(np.argmin(((colours - mean) ** 2).sum(1))))
            pa.append(_pitch_class(audio, rate, n))
            pt.append(_text_class(r.text, MELD_LABELS))
            assert r.sentiment == {"neutral": "neutral", "joy": "positive"}.get(r.emotion, r.sentiment)
    y, preds = np.array(y), {"text": np.array(pt), "audio": np.array(pa), "video": np.array(pv)}
    acc = {m: float((p == y).mean()) for m, p in preds.items()}
    # each modality carries the label with p_true = 0.6 (+ chance of a random hit): informative, not perfect
    for m, a in acc.items():
        assert 0.45 < a < 0.9, (m, acc)
    # majority vote (ties -> text) beats every single modality: the modalities are complementary
    stack = np.stack([preds["text"], preds["audio"], preds["video"]])
    vote = np.array([np.bincount(col[col >= 0], minlength=n).argmax() if np.bincount(col[col >= 0]).max() > 1
                     else col[0] for col in stack.T])
    assert (vote == y).mean() > max(acc.values()), acc
    assert len(set(y.tolist())) >= 5  # the flattened class prior still gives most classes
    speakers = {}
    for r in rows["train"]:
        speakers.setdefault(r.dialogue_id, set()).add(r.speaker)
    assert max(map(len, speakers.values())) == 9 and min(map(len, speakers.values())) >= 2


def test_deterministic_idempotent_and_refusals(meld, tmp_path):
    again = synthesize("meld", meld.root, dialogues=14, seed=1)  # same arguments: returned unchanged
    assert again == meld
    with pytest.raises(ConfigError, match="made with"):
        synthesize("meld", meld.root, dialogues=14, seed=2)
    a = synthesize("meld", tmp_path / "a", dialogues=3, seed=7)
    b = synthesize("meld", tmp_path / "b", dialogues=3, seed=7)
    c = synthesize("meld", tmp_path / "c", dialogues=3, seed=8)
    text = lambda r: (r.root / "train_sent_emo.csv").read_text()  # noqa: E731
    assert text(a) == text(b) != text(c)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        synthesize("meld", tmp_path / "busy")
    with pytest.raises(ConfigError, match="choose one of: meld, iemocap"):
        synthesize("manifest", tmp_path / "d")
    with pytest.raises(ConfigError, match="at least 3"):
        synthesize("meld", tmp_path / "e", dialogues=2)
    with pytest.raises(ConfigError, match="only works with recipe 'meld'"):
        synthesize("iemocap", tmp_path / "f", text_from=tmp_path)


def test_text_from_real_csvs(meld_csv, tmp_path):
    res = synthesize("meld", tmp_path / "m", dialogues=3, seed=0, text_from=meld_csv, faults=True)
    real = {s: {(r.dialogue_id, r.utterance_id): r for r in read_meld_csv(meld_csv / f"{s}_sent_emo.csv")}
            for s in ("train", "dev", "test")}
    ours = {s: read_meld_csv(res.root / f"{s}_sent_emo.csv") for s in ("train", "dev", "test")}
    assert sum(map(len, ours.values())) == res.utterances
    for s, rs in ours.items():
        dias = {r.dialogue_id for r in rs}
        assert len(dias) == 1
        for r in rs:
            src = real[s][(r.dialogue_id, r.utterance_id)]
            assert (r.text, r.speaker, r.emotion, r.sentiment) == (src.text, src.speaker, src.emotion, src.sentiment)
        # whole dialogues are copied, gaps and all
        assert len(rs) == sum(1 for k in real[s] if k[0] in dias)
    assert {f["kind"] for f in res.faults} == {"missing_clip", "truncated_clip", "no_audio_clip", "orphan_clip",
                                               "malformed_row"}


def test_iemocap_layout_and_media(tmp_path):
    res = synthesize("iemocap", tmp_path / "i", dialogues=4, seed=2)
    avis = sorted(res.root.glob("Session*/dialog/avi/DivX/*.avi"))
    assert len(avis) == 4
    for avi in avis:
        dialog = avi.stem
        sess = avi.parents[3]
        emo = (sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt").read_text()
        trn = (sess / "dialog" / "transcriptions" / f"{dialog}.txt").read_text()
        wavs = sorted((sess / "sentences" / "wav" / dialog).glob("*.wav"))
        turns = [line.split("\t") for line in emo.splitlines() if line.startswith("[")]
        assert len(turns) == len(wavs) == len(trn.splitlines())
        assert {t[2] for t in turns} - {"hap", "sad", "neu", "ang", "exc", "fru"}  # some turns to drop
        assert {t[1].rsplit("_", 1)[1][0] for t in turns} <= {"F", "M"}
        end = max(float(t[0][1:-1].split(" - ")[1]) for t in turns)
        with av.open(str(avi)) as c:
            vs = c.streams.video[0]
            n = sum(1 for _ in c.decode(vs))
            assert vs.codec_context.name == "mpeg4" and n / 10.0 > end
        with wave.open(str(wavs[0])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert 1.0 <= w.getnframes() / 16000 <= 2.0
    assert len(IEMOCAP_LABELS) == 6
