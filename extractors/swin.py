"""`swin`: a Swin image backbone on the uniformly sampled frames of each clip -> [F, D] per utterance.

Two backends, both preprocessing with the model's own config:
- transformers: `AutoModel` (SwinModel) + `AutoImageProcessor` from a hub id or a save_pretrained dir;
  the per-frame embedding is the model's pooled output (mean over the last stage's tokens).
- timm: `timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": ckpt}, num_classes=0)`
  for a checkpoint file (needs `arch`), `local-dir:<dir>` for a timm folder (config.json with
  "architecture"), or a hub id `timm/<name>`; transforms from `resolve_data_config`.
A graph model later averages the frames; this extractor keeps all F of them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ClassVar

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.errors import ConfigError, MediaError

from .base import (EXTRACTORS, Extractor, autocast_context, hf_load_kwargs, load_error, pin_for, to_device,
                   to_float32, torch_provenance)

BACKENDS = ("auto", "transformers", "timm")


@dataclass(frozen=True)
class SwinConfig(Config):
    """model: hub id, save_pretrained dir, timm folder, or timm checkpoint file (with `arch`).
    backend: "auto" picks timm for `timm/...` ids, timm folders and checkpoint files (or when `arch` is
    given), else transformers. num_frames: frames per clip F (the media helper samples them)."""

    section: ClassVar[str] = "swin"

    model: str = "microsoft/swin-base-patch4-window7-224"
    revision: str | None = None
    backend: Literal["auto", "transformers", "timm"] = "auto"
    arch: str | None = None
    num_frames: int = 15
    autocast: bool = False

    def validate(self) -> None:
        self.require(self.num_frames >= 1, "num_frames", "must be >= 1")


def pick_backend(model: str, backend: str, arch: str | None) -> str:
    if backend != "auto":
        return backend
    path = Path(model).expanduser()
    if path.is_file() or arch is not None or model.startswith(("timm/", "hf-hub:")):
        return "timm"
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            return "timm" if "architecture" in json.loads(cfg.read_text()) else "transformers"
        except (OSError, ValueError):
            return "transformers"
    return "transformers"


@EXTRACTORS.register("swin")
class SwinExtractor(Extractor):
    """uint8 frames [F, H, W, 3] -> float32 [F, D] per-frame embeddings."""

    name = "swin"
    modality = "video"
    version = "1"
    config_cls = SwinConfig
    _FRAME_BATCH = 64  # frames per forward: bounds memory, results do not depend on it

    def _load(self, device: str) -> None:
        ref = self.config.model
        self.weights_identity()
        self._backend = pick_backend(ref, self.config.backend, self.config.arch)
        if self._backend == "timm":
            self._load_timm(ref)
        else:
            self._load_hf(ref)
        self._model = self._model.to(device).eval()

    def _load_hf(self, ref: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        try:
            self._processor = AutoImageProcessor.from_pretrained(ref, **hf_load_kwargs(ref, self.config.revision))
            model = AutoModel.from_pretrained(ref, **hf_load_kwargs(ref, self.config.revision), dtype=torch.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise load_error("swin (transformers) model / image processor", ref, exc) from None
        if not hasattr(model.config, "hidden_size") or not hasattr(model, "pooler") or model.pooler is None:
            raise load_error("swin (transformers) model", ref,
                             TypeError(f"{type(model).__name__} has no pooled output; expected a SwinModel"))
        self._model = model
        self._dim = int(model.config.hidden_size)

    def _load_timm(self, ref: str) -> None:
        import timm
        from timm.data import create_transform, resolve_data_config

        path = Path(ref).expanduser()
        try:
            if path.is_file():
                if self.config.arch is None:
                    raise ConfigError(f"swin: model={ref!r} is a checkpoint file; pass arch=<timm model name> "
                                      "(e.g. swin_base_patch4_window7_224)")
                model = timm.create_model(self.config.arch, pretrained=True, num_classes=0,
                                          pretrained_cfg_overlay={"file": str(path)})
            elif path.is_dir():
                model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
            else:
                name = ref if ref.startswith("hf-hub:") else f"hf-hub:{ref}"
                model = timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise load_error("swin (timm) model", ref, exc) from None
        self._transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
        self._model = model
        self._dim = int(model.num_features)

    def decode_kwargs(self) -> dict[str, Any]:
        return {"num_frames": self.config.num_frames}

    def _pixels(self, frames: np.ndarray):
        """uint8 [N, H, W, 3] -> float [N, 3, h, w] preprocessed as the model was trained."""
        import torch

        if self._backend == "timm":
            from PIL import Image

            return torch.stack([self._transform(Image.fromarray(f)) for f in frames])
        return self._processor(images=list(frames), return_tensors="pt")["pixel_values"]

    def prepare(self, batch: list) -> tuple[int, Any]:
        """Checks and preprocesses the clips (a decode thread runs this ahead of the encoder):
        (clips B, float pixels [B * F, 3, h, w], pinned on CUDA)."""
        import torch

        self._ready("prepare")
        F = self.config.num_frames
        for i, frames in enumerate(batch):
            shape = getattr(frames, "shape", None)
            if (getattr(frames, "dtype", None) != np.uint8 or len(shape) != 4 or shape[0] != F or shape[-1] != 3):
                raise MediaError(f"swin: input {i} is {getattr(frames, 'dtype', type(frames).__name__)} {shape}; "
                                 f"expected uint8 [{F}, H, W, 3] (decode with load_frames(num_frames={F}))")
        # clips may differ in size: preprocessing resizes each frame, then all frames share forwards
        return len(batch), pin_for(torch.cat([self._pixels(np.asarray(f)) for f in batch]), self.device)

    def _extract(self, prepared: tuple[int, Any]) -> list[np.ndarray]:
        import torch

        F = self.config.num_frames
        n, pixels = prepared
        feats = []
        with torch.inference_mode(), autocast_context(self.config.autocast, self.device):
            for s in range(0, pixels.shape[0], self._FRAME_BATCH):
                x = to_device(pixels[s:s + self._FRAME_BATCH], self.device)
                if self._backend == "timm":
                    feats.append(self._model(x).float())
                else:
                    feats.append(self._model(pixel_values=x).pooler_output.float())
        emb = to_float32(torch.cat(feats))  # [B * F, D]
        return [np.ascontiguousarray(emb[i * F:(i + 1) * F]) for i in range(n)]

    def provenance(self) -> dict[str, Any]:
        import timm

        return {**super().provenance(), **torch_provenance(), "timm": timm.__version__,
                "backend": getattr(self, "_backend", None)}
