"""The one device resolver: 'auto' -> cuda when available, else cpu; a CUDA request without a GPU is an error."""
from __future__ import annotations

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str | None) -> str:
    device = device or "auto"
    if device == "cpu":
        return device  # no torch import: weight-free work (openSMILE) never needs it
    if device != "auto" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible; use --device cpu or --device auto")
    return device
