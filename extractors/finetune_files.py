"""The files of a fine-tune: resume state, classifier head, saved encoder. Everything here is tensors and
plain values written with torch.save and read back with `weights_only=True`, so a crafted or corrupt file
in a shared cache is refused (or, for a resume state, discarded) and never runs code."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

HEAD_FILE = "classifier_head.pt"
STATE_FILE = "state.pt"
BEST_DIR = "best"
MODALITIES = ("text", "audio")


def save_state(obj: Any, path: Path) -> None:
    """torch.save of tensors and plain values only (so `weights_only=True` loads it), via a temp name."""
    import torch

    from mer_pipe.common.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(path: Path, device: str, epochs: int) -> dict[str, Any] | None:
    """The resume state, loaded without running code (`weights_only=True`); None when it is unreadable,
    crafted (a pickle naming anything but tensors and plain values) or not shaped like ours."""
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except _load_errors():
        return None
    ok = isinstance(state, dict) and all(isinstance(state.get(k), dict) for k in ("model", "optimizer", "scheduler",
                                                                                   "record"))
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if not ok or not isinstance(epoch, int) or not 1 <= epoch <= epochs or not isinstance(state["record"].get("epochs"), list):
        return None
    return state


def _load_errors() -> tuple[type[BaseException], ...]:
    """What torch.load(weights_only=True) raises on a truncated, corrupt or crafted file (refused, never run)."""
    import pickle
    import zipfile

    return (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, zipfile.BadZipFile)


def fresh_work_dir(work: Path) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return work


def load_head(path: Path) -> dict[str, Any]:
    """classifier_head.pt as tensors and plain values (`weights_only=True`); ModelLoadError naming the
    file when it is corrupt or crafted."""
    import torch

    from mer_pipe.common.errors import ModelLoadError

    try:
        head = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(head, dict) and head.get("modality") in MODALITIES and isinstance(head.get("n_classes"), int) \
            and all(isinstance(head.get(k), torch.Tensor) for k in ("weight", "bias"))
    except _load_errors() as exc:
        ok, head = False, type(exc).__name__
    if not ok:
        raise ModelLoadError(f"{path} is corrupt or not a classifier head written by mer-pipe (refused without "
                             f"running it: {head if isinstance(head, str) else 'unexpected content'}); delete the "
                             f"checkpoint folder {path.parent} and rerun the feature run that fine-tunes it")
    return head


def save_encoder(model: Any, pre: Any, out: Path, modality: str, cfg: Any, n_classes: int) -> None:
    """Write the encoder (save_pretrained), its pre-processor and the head into `out` via a temp dir."""
    import torch

    from mer_pipe.common.files import temp_name

    tmp = out.with_name(temp_name(out.name))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.encoder.save_pretrained(tmp)
    pre.save_pretrained(tmp)
    torch.save({"weight": model.head.weight.detach().cpu(), "bias": model.head.bias.detach().cpu(),
                "pooling": cfg.pooling if modality == "text" else "mean", "modality": modality,
                "n_classes": n_classes}, tmp / HEAD_FILE)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


__all__ = ["BEST_DIR", "HEAD_FILE", "STATE_FILE", "fresh_work_dir", "load_head", "load_state", "save_encoder",
           "save_state"]
