"""The `Extractor` base class, the registry, and the helpers every neural extractor shares:
config validation, weights identity (what goes into the cache key), model loading errors and devices.

Heavy libraries (torch, transformers) are imported inside functions so that importing this module,
planning stages and computing keys stay fast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mer_pipe.common.devices import resolve_device
from mer_pipe.common.errors import ModelLoadError
from mer_pipe.common.registry import Registry
from mer_pipe.common.training import autocast

EXTRACTORS: Registry = Registry("extractor")

# Resolved configs carry the weights identity under this key; it is not a config field.
WEIGHTS_KEY = "weights"

# Files that decide what a local checkpoint computes (weights, configs, tokenizer / processor files).
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json", ".txt", ".model", ".msgpack")
_NOT_IDENTITY = {"README.txt", "README.md"}


class Extractor:
    """One feature extractor: a frozen config, weights loaded once per worker by `setup`, then
    `extract(batch)` -> one float32 array per input, same order ([D] pooled or [T, D] sequence)."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # "text" | "audio" | "video"
    version: ClassVar[str] = "1"  # bump when outputs change for the same config
    config_cls: ClassVar[type]

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        values = dict(config or {})
        # A resolved config (with its weights identity) may be passed back in; the identity is
        # re-checked against the weights found on disk at setup time.
        self._expected_weights = values.pop(WEIGHTS_KEY, None)
        self.config = self.config_cls.from_dict(values)  # typed, unknown keys listed (common/config.py)
        self.device: str | None = None
        self._weights_identity: dict[str, Any] | None = None
        self._dim: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load weights once (per worker). device: "cpu" | "cuda" | "cuda:N" | "auto"."""
        if self.device is not None:
            return
        device = resolve_device(device)
        self._load(device)
        if self._expected_weights is not None and self._expected_weights != self.weights_identity():
            raise ModelLoadError(
                f"extractor {self.name!r}: the weights at {self._model_ref()!r} changed since this config was "
                f"resolved (expected {self._expected_weights}, found {self.weights_identity()}); "
                "re-plan the features (the new weights get a new cache key)"
            )
        self.device = device

    def _load(self, device: str) -> None:
        """Subclasses load models here and set `self._dim`."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Feature width D (last axis of every output). Needs `setup` for neural extractors."""
        if self._dim is None:
            raise RuntimeError(f"extractor {self.name!r}: call setup(device) before reading dim")
        return self._dim

    def extract(self, batch: list) -> list[np.ndarray]:
        """One float32 array per input, same order: `forward(prepare(batch))`."""
        self._ready("extract")
        if not batch:
            return []
        return self.forward(self.prepare(list(batch)))

    def prepare(self, batch: list) -> Any:
        """The CPU side of a batch (checks, resizing, tokenising, normalising; on CUDA into pinned memory,
        `pin_for`). The feature run calls it in a decode thread while `forward` runs the previous batch
        (pipeline/extract/overlap.py), so it must not use the model. Default: the batch as it is."""
        self._ready("prepare")
        return list(batch)

    def forward(self, prepared: Any) -> list[np.ndarray]:
        """The encoder on what `prepare` returned -> one float32 array per input (`_extract`)."""
        self._ready("forward")
        return self._extract(prepared)

    def _ready(self, what: str) -> None:
        if self.device is None:
            raise RuntimeError(f"extractor {self.name!r}: call setup(device) before {what}")

    def _extract(self, batch: Any) -> list[np.ndarray]:
        """Subclasses: `prepare`'s output (by default the decoded inputs) -> one float32 array per input."""
        raise NotImplementedError

    # --- identity ----------------------------------------------------------------------------------
    def _model_ref(self) -> str | None:
        """The hub id or local path this extractor loads; None for weight-free extractors."""
        return getattr(self.config, "model", None)

    def weights_identity(self) -> dict[str, Any] | None:
        """Hub id + revision + resolved commit, or {"sha256": ...} of a local checkpoint's files (computed once)."""
        if self._weights_identity is None:
            ref = self._model_ref()
            if ref is None:
                return None
            self._weights_identity = weights_identity(ref, getattr(self.config, "revision", None))
        return self._weights_identity

    def resolved_config(self) -> dict[str, Any]:
        """What gets hashed: every config field (defaults included) plus the weights identity."""
        out = dataclasses.asdict(self.config)
        ident = self.weights_identity()
        if ident is not None:
            out[WEIGHTS_KEY] = ident
        return out

    def key_config(self) -> dict[str, Any]:
        """`resolved_config()` without where local weights live: for a local checkpoint the sha256 of
        its files is the identity, so copying or moving the weights keeps every cache key."""
        out = self.resolved_config()
        if "sha256" in (out.get(WEIGHTS_KEY) or {}) and "model" in out:
            out["model"] = "<local>"
        return out

    def provenance(self) -> dict[str, Any]:
        """Recorded next to the features, never hashed: library versions, resolved paths, device."""
        import platform

        prov: dict[str, Any] = {"extractor": self.name, "version": self.version, "device": self.device,
                                "python": platform.python_version(), "numpy": np.__version__}
        ref = self._model_ref()
        if ref is not None and Path(ref).expanduser().exists():
            prov["model_path"] = str(Path(ref).expanduser().resolve())
        return prov

    def decode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the media helpers (`load_audio` / `load_frames`)."""
        return {}


# --- shared helpers ----------------------------------------------------------------------------
def is_local(ref: str) -> bool:
    """A model reference is local when it names an existing path or looks like one."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~"))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers at all. Without this, an offline machine spends ~50 s in
    huggingface_hub's retry back-off before the load fails; with it, we go to the local cache at once."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            _HUB_REACHABLE = True
        except OSError:
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


_HUB_REACHABLE: bool | None = None


def hf_load_kwargs(ref: str, revision: str | None) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained`: the revision, pinned to the commit the cache key was
    computed from (`hub_commit`) so the snapshot loaded is the one keyed, and cache-only loading when a
    hub id is asked for while the hub cannot be reached (the ModelLoadError then says what to pass instead)."""
    local = Path(ref).expanduser().exists()
    commit = None if local or is_local(ref) else hub_commit(ref, revision)
    return {"revision": commit or revision, "local_files_only": not local and not hub_reachable()}


_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_HUB_COMMITS: dict[tuple[str, str], str | None] = {}  # asked of the hub once per process


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME/hub, ...)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def local_hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit that `revision` (default main) points to in the local HF cache
    (`models--org--name/refs/<revision>`), when that snapshot is there; else None."""
    rev = revision or "main"
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    if _COMMIT_RE.match(rev):
        return rev if (repo_dir / "snapshots" / rev).is_dir() else None
    try:
        commit = (repo_dir / "refs" / rev).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT_RE.match(commit) and (repo_dir / "snapshots" / commit).is_dir() else None


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a hub query raises when it cannot answer: the hub's HTTP errors are OSErrors, transport errors
    come from its HTTP client (httpx, or the httpx2 fork some huggingface_hub versions use)."""
    import importlib

    errors: list[type[BaseException]] = [OSError, ValueError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a hub id + revision resolves to: the revision itself when it is a commit hash; the hub's
    answer when the hub is reachable (an updated model gets a new commit, hence a new key); else the
    snapshot the local HF cache holds for it; None when neither knows (loading will fail and say so)."""
    rev = revision or "main"
    if _COMMIT_RE.match(rev):
        return rev
    if hub_reachable():
        if (repo_id, rev) not in _HUB_COMMITS:
            from huggingface_hub import HfApi

            try:
                _HUB_COMMITS[(repo_id, rev)] = HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(
                    repo_id, revision=rev, timeout=10).sha
            except _hub_errors():  # unknown id or revision, gated, or the network went away: ask the cache
                _HUB_COMMITS[(repo_id, rev)] = None
        if _HUB_COMMITS[(repo_id, rev)]:
            return _HUB_COMMITS[(repo_id, rev)]
    return local_hub_commit(repo_id, rev)


def weights_identity(ref: str, revision: str | None = None) -> dict[str, Any]:
    """{"hub": id, "revision": rev, "commit": sha} for a hub id (the commit of the snapshot that will be
    loaded, see `hub_commit`; a different snapshot re-keys); {"sha256": digest, "files": n} for a local
    checkpoint (file or directory; names and contents of the files that define the model)."""
    path = Path(ref).expanduser()
    if not path.exists():
        if is_local(ref):
            raise ModelLoadError(
                f"model path {ref!r} does not exist; pass a directory written by save_pretrained "
                "(or a timm checkpoint file), or use the `offline` preset"
            )
        return {"hub": ref, "revision": revision or "main", "commit": hub_commit(ref, revision)}
    if path.is_file():
        files = [path]
        base = path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and _defines_model(p, path))
        base = path
    if not files:
        raise ModelLoadError(
            f"model directory {ref!r} holds no weight or config files; pass a directory written by "
            "save_pretrained, or use the `offline` preset"
        )
    # Re-hashing a large checkpoint for every planned stage is slow; reuse a digest while no file changed.
    stamp = (str(path.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp in _DIGESTS:
        return dict(_DIGESTS[stamp])
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(base)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    _DIGESTS[stamp] = {"sha256": digest.hexdigest(), "files": len(files)}
    return dict(_DIGESTS[stamp])


_DIGESTS: dict[tuple, dict[str, Any]] = {}


def _defines_model(p: Path, root: Path) -> bool:
    rel = p.relative_to(root)
    if any(part.startswith(".") for part in rel.parts) or p.name in _NOT_IDENTITY:
        return False
    return p.suffix in _IDENTITY_SUFFIXES


def load_error(what: str, ref: str, exc: BaseException) -> ModelLoadError:
    """One clear message: what failed, why, and what to pass instead."""
    text = str(exc).strip()
    # Hugging Face errors run to a paragraph; the first sentence says what was missing
    reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
    if is_local(ref):
        hint = "pass a directory written by save_pretrained for this model family"
    else:
        hint = ("the hub is not reachable (offline, HF_HUB_OFFLINE=1) or the id is wrong; pass a local "
                "directory written by save_pretrained, or use the `offline` preset")
    return ModelLoadError(f"cannot load {what} from {ref!r} ({type(exc).__name__}: {reason[:300]}); {hint}")


def autocast_context(enabled: bool, device: str):
    """The extractor's `autocast` switch (off by default, so features are exact fp32): the "extract" row of the
    precision rule in `common/training.py`."""
    return autocast(enabled, device, "extract")


def pin_for(x, device: str | None):
    """A host tensor bound for a CUDA device, in pinned (page-locked) memory, so that `to_device` copies it
    asynchronously while the host prepares the next batch; unchanged for other devices."""
    if device is not None and device.startswith("cuda") and x.device.type == "cpu" and not x.is_pinned():
        return x.pin_memory()
    return x


def to_device(x, device: str):
    """A host tensor on `device`: on CUDA a non-blocking copy when it is pinned (kernels queued after it on
    the same stream wait for it; reading results back synchronises); `x` itself on CPU."""
    if device.startswith("cuda"):
        return x.to(device, non_blocking=x.is_pinned())
    return x


def to_float32(x) -> np.ndarray:
    """A torch tensor or array -> contiguous float32 numpy (autocast may hand back bf16/fp16)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def torch_provenance() -> dict[str, Any]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
