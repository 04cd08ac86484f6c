"""Batching for the fine-tune loop: index groups per step (the wav2vec2 extraction rule for audio, `audio_rule`),
collation into model inputs. Imports only numpy (torch lazily)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


# --- batching -----------------------------------------------------------------------------------------
def _batches(modality: str, pre: Any, inputs: Sequence[Any], order: Sequence[int], cfg: Any,
             pad_ok: bool, min_len: int) -> list[list[int]]:
    """Index groups per step. Text: consecutive chunks of `order`. Audio: the wav2vec2 extraction rule
    (equal lengths only unless the model takes an attention mask), keeping `order` within groups."""
    size = cfg.batch_size
    if modality == "text":
        return [list(order[i:i + size]) for i in range(0, len(order), size)]
    lengths = {i: _audio_len(inputs[i], cfg, min_len) for i in order}
    if pad_ok:
        return [list(order[i:i + size]) for i in range(0, len(order), size)]
    groups: dict[int, list[int]] = {}
    out: list[list[int]] = []
    for i in order:  # equal-length clips share a step; anything else goes alone or with its twins
        g = groups.setdefault(lengths[i], [])
        g.append(i)
        if len(g) == size:
            out.append(g)
            groups[lengths[i]] = []
    out.extend(g for g in groups.values() if g)
    return out


def _audio_len(wav: Any, cfg: Any, min_len: int) -> int:
    n = min(int(np.asarray(wav).size), int(round(cfg.max_seconds * 16000)))
    return max(n, min_len)


def _collate(modality: str, pre: Any, inputs: Sequence[Any], idx: Sequence[int], cfg: Any,
             device: str, pad_ok: bool, min_len: int) -> dict[str, Any]:
    import torch

    if modality == "text":
        enc = pre([inputs[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                  return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}
    wavs = []
    for i in idx:
        w = np.asarray(inputs[i], dtype=np.float32)[: int(round(cfg.max_seconds * 16000))]
        if w.size < min_len:
            w = np.pad(w, (0, min_len - w.size))
        wavs.append(w)
    feats = pre(wavs, sampling_rate=16000, padding=True, return_attention_mask=pad_ok, return_tensors="pt")
    out = {"input_values": feats["input_values"].to(device), "lengths": torch.tensor([w.size for w in wavs])}
    if pad_ok:
        out["attention_mask"] = feats["attention_mask"].to(device)
    return out


def audio_rule(enc: Any, pre: Any) -> tuple[bool, int]:
    """(pad_ok, min_len): the extractor's batching rule (pad with a mask only for layer-norm models that
    take one) and the conv stack's receptive field in samples (shorter clips are zero-padded to it)."""
    c = enc.config
    pad_ok = getattr(c, "feat_extract_norm", "group") == "layer" and bool(getattr(pre, "return_attention_mask", False))
    rf, jump = 1, 1
    for k, s in zip(c.conv_kernel, c.conv_stride):
        rf += (k - 1) * jump
        jump *= s
    return pad_ok, rf
