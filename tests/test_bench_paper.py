"""bench/bench_paper_preset.py: the published architectures it builds (extractors/archs.py), and its quick mode
end to end (slow: synth -> features --preset paper|deepmsi in fp32 and bf16 -> train the four models)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mer_pipe.extractors import archs

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_paper_preset.py"


def test_published_widths():
    """The configs are the published ones: the widths the paper models are specified on."""
    r = archs.roberta_large_config()
    assert (r.hidden_size, r.num_hidden_layers, r.num_attention_heads, r.intermediate_size, r.vocab_size,
            r.max_position_embeddings) == (1024, 24, 16, 4096, 50265, 514)
    b = archs.bert_base_uncased_config()
    assert (b.hidden_size, b.num_hidden_layers, b.vocab_size) == (768, 12, 30522)
    w = archs.wav2vec2_base_config()
    assert (w.hidden_size, w.num_hidden_layers, w.feat_extract_norm, len(w.conv_dim)) == (768, 12, "group", 7)
    assert math.prod(w.conv_stride) == 320  # 50 frames per second at 16 kHz
    s = archs.swin_base_config()
    assert (s.image_size, s.patch_size, s.window_size, list(s.depths)) == (224, 4, 7, [2, 2, 18, 2])
    assert s.embed_dim * 2 ** (len(s.depths) - 1) == 1024


def test_tiny_roberta_checkpoint_loads_and_tokenizes(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path = archs.build_random_checkpoint("roberta-large", tmp_path / "r", tiny=True,
                                         texts=["oh my god you are kidding", "you are my friend"] * 20)
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["oh my god"], return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == 0 and enc["input_ids"][0, -1].item() == 2  # <s> ... </s>
    model = AutoModel.from_pretrained(path)
    assert model.config.vocab_size == 50265 and model.config.hidden_size == 32
    assert "COST ONLY" in (path / "README.txt").read_text()
    with pytest.raises(KeyError, match="roberta-large"):
        archs.build_random_checkpoint("gpt-9", tmp_path / "x")


@pytest.mark.slow
def test_quick_mode_runs_the_whole_plumbing(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(BENCH), "--quick", "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["quick"] and r["utterances"] > 0
    got = {(f["preset"], f["slot"], f["precision"]) for f in r["features"]}
    for preset in ("paper", "deepmsi"):
        assert {(preset, s, "fp32") for s in ("t", "a_w2v")} <= got and (preset, "t", "bf16") in got
    assert {("paper", "a", "fp32"), ("paper", "v", "fp32"), ("paper", "v", "bf16")} <= got
    for f in r["features"]:
        assert f["utt_per_s_wall"] > 0 and f["mb_per_1000_utt"] > 0 and f["worker_peak_rss_mb"]
        assert f["decode_s"] >= 0 and f["forward_s"] > 0
    w = r["widths"]["paper"]
    assert w["a"]["dim"] == 88 and w["v"]["layout"] == "sequence" and w["v"]["shard_values_shape"][1] == 15
    assert set(r["finetune"]) == {"t", "a_w2v"}  # deepmsi fine-tunes BERT and wav2vec2
    trained = {t["model"]: t for t in r["train"]}
    assert set(trained) == {"ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer"}
    for t in trained.values():
        assert t["profile"] == "paper" and t["model_config"] and t["inputs"]["t"]["dim"] == 32
    assert trained["deepmsi-mer"]["slots"] == {"a": "a_w2v"}
    assert {"MELD paper fp32", "IEMOCAP deepmsi bf16"} <= set(r["projection"])
