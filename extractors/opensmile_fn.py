"""`opensmile`: openSMILE acoustic features (`opensmile.Smile.process_signal`) on the 16 kHz waveform.

Functionals give one vector per utterance (eGeMAPSv02: 88, ComParE_2016: 6373); `feature_level="lld"`
gives the frame sequence [T, D] (25 / 65 descriptors every 10 ms).

Non-finite values: openSMILE fills a too-short segment with NaN, and some functionals (e.g. slopes on
a fully unvoiced clip) can be undefined. Inputs shorter than `_MIN_SECONDS` are zero-padded to that
length first; any value still non-finite is set to 0 (the neutral value after the trainer's
standardisation) and counted in `provenance()` ("nonfinite_values", "nonfinite_inputs"), so a feature
set with many replacements is visible without changing its cache key.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, ClassVar

import numpy as np

from mer_pipe.common.config import Config
from mer_pipe.common.errors import MediaError

from .base import EXTRACTORS, Extractor

FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")
FEATURE_LEVELS = ("functionals", "lld")
_MIN_SECONDS = 0.25


@dataclass(frozen=True)
class OpenSmileConfig(Config):
    """feature_set: "eGeMAPSv02" (88 functionals) | "ComParE_2016" (6373); feature_level:
    "functionals" -> [D] | "lld" -> [T, D]."""

    section: ClassVar[str] = "opensmile"

    feature_set: Literal["eGeMAPSv02", "ComParE_2016"] = "eGeMAPSv02"
    feature_level: Literal["functionals", "lld"] = "functionals"
    sample_rate: int = 16000




@EXTRACTORS.register("opensmile")
class OpenSmileExtractor(Extractor):
    """float32 mono waveform -> float32 [D] functionals (or [T, D] low-level descriptors)."""

    name = "opensmile"
    modality = "audio"
    version = "1"
    config_cls = OpenSmileConfig

    def _load(self, device: str) -> None:
        import opensmile

        level = (opensmile.FeatureLevel.Functionals if self.config.feature_level == "functionals"
                 else opensmile.FeatureLevel.LowLevelDescriptors)
        self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.config.feature_set),
                                      feature_level=level)
        self._dim = len(self._smile.feature_names)
        self._nonfinite_values = 0
        self._nonfinite_inputs = 0

    def decode_kwargs(self) -> dict[str, Any]:
        return {"sample_rate": self.config.sample_rate}

    def _extract(self, batch: list) -> list[np.ndarray]:
        sr = self.config.sample_rate
        out = []
        for i, wav in enumerate(batch):
            wav = np.asarray(wav, dtype=np.float32)
            if wav.ndim != 1 or wav.size == 0:
                raise MediaError(f"opensmile: input {i} has shape {wav.shape}; expected a non-empty mono waveform "
                                 f"[S] at {sr} Hz (decode with load_audio)")
            min_len = int(_MIN_SECONDS * sr)
            if wav.size < min_len:
                wav = np.pad(wav, (0, min_len - wav.size))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Segment too short": handled below
                values = self._smile.process_signal(wav, sr).to_numpy(dtype=np.float32)
            bad = ~np.isfinite(values)
            if bad.any():
                self._nonfinite_values += int(bad.sum())
                self._nonfinite_inputs += 1
                values = np.where(bad, np.float32(0.0), values)
            out.append(np.ascontiguousarray(values[0] if self.config.feature_level == "functionals" else values))
        return out

    def provenance(self) -> dict[str, Any]:
        import opensmile

        prov = {**super().provenance(), "opensmile": opensmile.__version__}
        if self.device is not None:
            prov.update(nonfinite_values=self._nonfinite_values, nonfinite_inputs=self._nonfinite_inputs,
                        nonfinite_policy="set to 0")
        return prov
