"""The one device resolver: 'auto' -> cuda when available, else cpu; a CUDA request without a GPU is an error.

`check_device` is what every command that takes --device calls first, before any work: a wrong name or a
CUDA request on a machine without CUDA is one ConfigError (the CLI prints it on one line, exit 2).
Which GPU a dask worker takes is pipeline/executors.py's `worker_device` (the one module that knows dask).
"""
from __future__ import annotations

import os

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def _check_name(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")


def resolve_device(device: str | None) -> str:
    device = device or "auto"
    if device == "cpu":
        return device  # no torch import: weight-free work (openSMILE) never needs it
    _check_name(device)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible; use --device cpu or --device auto")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); pick one of them or --device cuda")
    return device


def check_device(device: str | None, *, remote: bool = False) -> None:
    """Refuse, before any work, a device this machine cannot give: a wrong name always; a CUDA request
    without a visible GPU unless `remote` (the workers of a dask scheduler elsewhere resolve it). No torch
    import for None, auto or cpu."""
    if device is None or device in ("auto", "cpu"):
        return
    _check_name(device)
    if not remote:
        resolve_device(device)


def may_use_cuda(device: str | None) -> bool:
    """`device` names CUDA, or is auto on a machine with an NVIDIA driver (found without importing torch)."""
    return device is not None and (device.startswith("cuda") or (device == "auto" and os.path.exists("/dev/nvidiactl")))


def local_gpus(device: str | None) -> int:
    """GPUs a local run on `device` uses: 0 for cpu (and for auto on a machine without an NVIDIA driver,
    `may_use_cuda`), 1 for cuda:N, every visible one for cuda (and auto with CUDA)."""
    if not may_use_cuda(device):
        return 0
    if device.startswith("cuda:"):
        return 1
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
