"""Cache keys must not depend on where local weights live (design: keys from declarative specs, not paths)."""
import shutil

from mer_pipe.cache.keys import feature_key
from mer_pipe.extractors import build_extractor
from mer_pipe.extractors.tiny import ensure_tiny_text


def test_moving_local_weights_keeps_the_key(tmp_path):
    a = ensure_tiny_text(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    ea, eb = build_extractor("text-hf", {"model": str(a)}), build_extractor("text-hf", {"model": str(b)})
    assert ea.resolved_config()["model"] != eb.resolved_config()["model"]  # the run still knows the path
    key = lambda e: feature_key("text-hf", e.version, e.key_config(), "digest")  # noqa: E731
    assert key(ea) == key(eb)
    # ... but changing a weight file changes it
    weights = next(p for p in b.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert key(build_extractor("text-hf", {"model": str(b)})) != key(ea)
