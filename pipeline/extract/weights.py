"""Check, in the client and before any cluster or worker starts, that every slot's weights can be found.

A local path must exist and hold a readable config (a `save_pretrained` or timm folder: `config.json` plus
weight files; or a checkpoint file). A hub id must be in the local Hugging Face cache, or the hub must be
reachable so the workers can download it. Without this check an offline `--preset paper` waited for the
dask cluster and every worker's model load, printed dask's task dump, then the one-line message.

The check reads only the local disk (huggingface_hub's `try_to_load_from_cache`); the hub is asked only
whether it answers at all (`hub_reachable`, a socket connect), and only for ids not cached.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mer_pipe.common.errors import ModelLoadError

# Files that hold weights in a save_pretrained / timm folder (sharded checkpoints have an index json).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".msgpack", ".h5")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class WeightsProblem:
    """One slot whose weights cannot be found: what it names and why not."""

    slot: str
    extractor: str
    ref: str
    reason: str

    def named(self) -> str:
        return f"slot {self.slot} ({self.extractor}) model {self.ref!r}"


def local_problem(ref: str) -> str | None:
    """Why the local checkpoint `ref` cannot be loaded, or None when it looks loadable."""
    path = Path(ref).expanduser()
    if not path.exists():
        return "no such path"
    if path.is_file():
        return None if path.stat().st_size > 0 else "an empty file"
    cfg = path / "config.json"
    if not cfg.is_file():
        return "no config.json there (not a directory written by save_pretrained)"
    try:
        parsed = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"config.json unreadable ({type(exc).__name__})"
    if not isinstance(parsed, dict) or not ({"model_type", "architecture"} & parsed.keys()):
        return "config.json has neither model_type nor architecture (not a model config)"
    has_weights = any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()) or any(
        (path / name).is_file() for name in _WEIGHT_INDEXES)
    return None if has_weights else "config.json but no weight files (*.safetensors, *.bin)"


def hub_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether the local HF cache holds `repo_id`'s config.json at `revision` (default main); disk only."""
    from huggingface_hub import try_to_load_from_cache

    from mer_pipe.extractors.base import hf_hub_cache

    repo_id = repo_id.removeprefix("hf-hub:")
    try:  # the cache the loaders use (HF_HUB_CACHE / HF_HOME read now, not at huggingface_hub's import)
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hf_hub_cache(), revision=revision)
    except ValueError:  # a malformed repo id (huggingface_hub validates it)
        return False
    return isinstance(found, str)


def slot_problem(slot: str, extractor: str, config: dict) -> WeightsProblem | None:
    """The problem with one slot's weights, or None (weight-free extractors have none)."""
    from mer_pipe.extractors import build_extractor
    from mer_pipe.extractors.base import hub_reachable, is_local

    ext = build_extractor(extractor, dict(config))  # validates the config only; cheap
    try:
        ref = ext._model_ref()
    except ModelLoadError as exc:  # e.g. the packaged default text model is not installed
        return WeightsProblem(slot, extractor, str(getattr(ext.config, "model", None)), str(exc))
    if ref is None:
        return None
    if is_local(ref):
        reason = local_problem(ref)
        return None if reason is None else WeightsProblem(slot, extractor, ref, reason)
    if hub_cached(ref, getattr(ext.config, "revision", None)) or hub_reachable():
        return None
    return WeightsProblem(slot, extractor, ref, "not in the local Hugging Face cache and the hub is not reachable")


def check_weights(slots: Iterable) -> None:
    """Raise one ModelLoadError (one line) naming every slot whose weights cannot be found, and the fix.

    `slots`: resolved SlotSpecs (pipeline/extract/presets.py), tiny checkpoints already materialised."""
    problems = [p for s in slots if (p := slot_problem(s.slot, s.extractor, dict(s.config))) is not None]
    if not problems:
        return
    from mer_pipe.extractors.base import hf_hub_cache

    by_reason: dict[str, list[WeightsProblem]] = {}
    for p in problems:
        by_reason.setdefault(p.reason, []).append(p)
    said = "; ".join(", ".join(p.named() for p in group) + ": " + reason for reason, group in by_reason.items())
    offline = any("hub" in p.reason for p in problems)
    where = f" ({hf_hub_cache()})" if offline else ""
    fixes = " ".join(f"--set {p.slot}.model=/path/to/save_pretrained_dir" for p in problems)
    raise ModelLoadError(
        said.replace("the local Hugging Face cache", f"the local Hugging Face cache{where}")
        + f"; pass local checkpoints instead: {fixes}"
        + (", or download the ids into that cache on a connected machine," if offline else ",")
        + " or use --preset offline"
    )
