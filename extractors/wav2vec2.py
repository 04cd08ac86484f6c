"""`wav2vec2`: any wav2vec2-family encoder (AutoFeatureExtractor + AutoModel) by hub id or local dir.

Long clips are cut into `chunk_seconds` chunks; each chunk is normalised by the model's own feature
extractor and encoded; frames of all chunks are then pooled together (or returned as [T, D]).

Padding must not leak. Models with `feat_extract_norm == "group"` (wav2vec2-base) normalise the first
conv layer over time and take no attention mask, so zero padding changes every frame: those chunks are
batched only with chunks of exactly equal length (the full 10 s chunks of long clips), else run alone.
Layer-norm models (large / lv60) are batched with padding and an attention mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, ClassVar

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.errors import ConfigError, MediaError

from .base import (EXTRACTORS, Extractor, autocast_context, hf_load_kwargs, load_error, pin_for, to_device,
                   to_float32, torch_provenance)
from .text_hf import hidden_layer_range

POOLINGS = ("mean", "none")
# Padded samples per forward for layer-norm models (~100 s of audio): bounds memory, not results.
_MAX_BATCH_SAMPLES = 1_600_000
# A tail chunk shorter than this is merged into the chunk before it rather than encoded alone.
_MIN_TAIL_SECONDS = 1.0


@dataclass(frozen=True)
class Wav2Vec2Config(Config):
    """layer: hidden-state index (-1 = last, 0 = input to the transformer); layers: mean of the
    `layers` states ending at `layer`. pooling: "mean" -> [D], "none" -> [T, D] frames.
    chunk_seconds: encode long clips in chunks of this length (0 = whole clip at once)."""

    section: ClassVar[str] = "wav2vec2"

    model: str = "facebook/wav2vec2-base"
    revision: str | None = None
    layer: int = -1
    layers: int = 1
    pooling: Literal["mean", "none"] = "mean"
    chunk_seconds: float = 10.0
    sample_rate: int = 16000
    autocast: bool = False

    def validate(self) -> None:
        self.require(self.layers >= 1, "layers", "must be >= 1 (1 = just `layer`)")
        self.require(self.chunk_seconds == 0 or self.chunk_seconds >= 2 * _MIN_TAIL_SECONDS, "chunk_seconds",
                     f"must be 0 (no chunking) or >= {2 * _MIN_TAIL_SECONDS}")


def chunk_bounds(n: int, chunk: int, min_tail: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering [0, n); a tail shorter than `min_tail` joins the previous chunk."""
    if chunk <= 0 or n <= chunk:
        return [(0, n)]
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_tail:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@EXTRACTORS.register("wav2vec2")
class Wav2Vec2Extractor(Extractor):
    """float32 mono waveform at 16 kHz -> float32 [D] (pooling mean) or [T, D] (pooling none)."""

    name = "wav2vec2"
    modality = "audio"
    version = "1"
    config_cls = Wav2Vec2Config

    def _load(self, device: str) -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        ref, rev = self.config.model, self.config.revision
        self.weights_identity()
        try:
            self._fe = AutoFeatureExtractor.from_pretrained(ref, **hf_load_kwargs(ref, rev))
            model = AutoModel.from_pretrained(ref, **hf_load_kwargs(ref, rev), dtype=torch.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise load_error("wav2vec2 model / feature extractor", ref, exc) from None
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise load_error("wav2vec2 model", ref, TypeError(f"{type(model).__name__} is not a wav2vec2-family encoder"))
        self._model = model.to(device).eval()
        cfg = self._model.config
        fe_rate = int(getattr(self._fe, "sampling_rate", self.config.sample_rate))
        if fe_rate != self.config.sample_rate:
            raise ConfigError(f"wav2vec2: {ref!r} expects {fe_rate} Hz audio but sample_rate={self.config.sample_rate}; "
                              f"pass sample_rate={fe_rate}")
        self._layers = hidden_layer_range("wav2vec2", self.config.layer, self.config.layers,
                                          int(cfg.num_hidden_layers) + 1)
        # group-norm feature encoders (and feature extractors without attention masks) see padding
        self._pad_ok = (getattr(cfg, "feat_extract_norm", "group") == "layer"
                        and bool(getattr(self._fe, "return_attention_mask", False)))
        rf, jump = 1, 1  # receptive field of the conv stack in samples: shorter input gives no frame
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
            rf += (k - 1) * jump
            jump *= s
        self._min_len = rf
        self._dim = int(cfg.hidden_size)

    def decode_kwargs(self) -> dict[str, Any]:
        return {"sample_rate": self.config.sample_rate}

    def prepare(self, batch: list) -> tuple[int, list[int], list[int], list[tuple[list[int], dict[str, Any]]]]:
        """Checks, chunks and normalises the waveforms (ahead of the encoder): (inputs, chunk owner, chunk
        lengths, [(chunk indices, model inputs pinned on CUDA)] per forward)."""
        self._ready("prepare")
        sr = self.config.sample_rate
        chunk = int(round(self.config.chunk_seconds * sr))
        chunks: list[np.ndarray] = []
        owner: list[int] = []
        for i, wav in enumerate(batch):
            wav = np.asarray(wav, dtype=np.float32)
            if wav.ndim != 1 or wav.size == 0:
                raise MediaError(f"wav2vec2: input {i} has shape {wav.shape}; expected a non-empty mono waveform "
                                 f"[S] at {sr} Hz (decode with load_audio)")
            for s, e in chunk_bounds(wav.size, chunk, int(_MIN_TAIL_SECONDS * sr)):
                piece = wav[s:e]
                if piece.size < self._min_len:  # too short for one frame: zero-pad to the receptive field
                    piece = np.pad(piece, (0, self._min_len - piece.size))
                chunks.append(piece)
                owner.append(i)
        lengths = [c.size for c in chunks]
        groups = []
        for group in self._groups(lengths):
            feats = self._fe([chunks[j] for j in group], sampling_rate=sr, padding=True,
                             return_attention_mask=self._pad_ok, return_tensors="pt")
            inputs = {"input_values": pin_for(feats["input_values"], self.device)}
            if self._pad_ok:
                inputs["attention_mask"] = pin_for(feats["attention_mask"], self.device)
            groups.append((group, inputs))
        return len(batch), owner, lengths, groups

    def _extract(self, prepared) -> list[np.ndarray]:
        n, owner, lengths, groups = prepared
        frames = self._encode_chunks(lengths, groups)
        out: list[list[np.ndarray]] = [[] for _ in range(n)]
        for i, f in zip(owner, frames):
            out[i].append(f)
        result = []
        for parts in out:
            seq = np.concatenate(parts, axis=0)  # [T, D] over all chunks
            result.append(np.ascontiguousarray(seq.mean(0) if self.config.pooling == "mean" else seq, np.float32))
        return result

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Chunk indices per forward pass."""
        order = sorted(range(len(lengths)), key=lambda j: lengths[j])
        groups: list[list[int]] = []
        for j in order:
            g = groups[-1] if groups else None
            if g is not None:
                same = lengths[g[0]] == lengths[j]
                fits = lengths[j] * (len(g) + 1) <= _MAX_BATCH_SAMPLES
                if fits and (same or self._pad_ok):
                    g.append(j)
                    continue
            groups.append([j])
        return groups

    def _encode_chunks(self, lengths: list[int], groups: list) -> list[np.ndarray]:
        """Prepared chunk groups -> float32 [T_j, D] valid frames of the selected layer(s), per chunk."""
        import torch

        result: list[np.ndarray | None] = [None] * len(lengths)
        for group, inputs in groups:
            kwargs = {k: to_device(v, self.device) for k, v in inputs.items()}
            with torch.inference_mode(), autocast_context(self.config.autocast, self.device):
                out = self._model(**kwargs, output_hidden_states=True)
            h = torch.stack([out.hidden_states[k].float() for k in self._layers]).mean(0)  # [B, T, D]
            valid = self._model._get_feat_extract_output_lengths(torch.tensor([lengths[j] for j in group]))
            h = to_float32(h)
            for row, (j, t) in enumerate(zip(group, valid.tolist())):
                result[j] = h[row, : int(t)]
        return result  # type: ignore[return-value]

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), **torch_provenance()}
