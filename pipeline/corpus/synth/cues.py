"""Planted, label-dependent signal for the synthetic corpora.

Each modality of each utterance independently shows its true class cue with probability `p_true`
and the cue of a uniformly random class otherwise, so every modality is informative, none is perfect,
and combining modalities helps. The cues are deliberately coarse (a word, a pitch/energy pattern, a
colour) so that tiny randomly initialised extractors still separate them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Emotion words per label name (MELD and IEMOCAP names); the first is the strongest cue.
CUE_WORDS: dict[str, tuple[str, ...]] = {
    "neutral": ("okay", "fine", "alright"),
    "surprise": ("wow", "whoa", "unbelievable"),
    "fear": ("scared", "terrified", "afraid"),
    "sadness": ("sad", "miserable", "heartbroken"),
    "joy": ("great", "wonderful", "delighted"),
    "disgust": ("gross", "disgusting", "yuck"),
    "anger": ("furious", "angry", "outraged"),
    "happy": ("happy", "glad", "cheerful"),
    "sad": ("sad", "miserable", "heartbroken"),
    "angry": ("furious", "angry", "outraged"),
    "excited": ("excited", "thrilled", "amazing"),
    "frustrated": ("frustrated", "annoyed", "fed up"),
}

_FILLER = (
    "well i think it is {w} you know",
    "so that was {w} i guess",
    "honestly this is {w} right now",
    "i mean it is just {w} again",
    "look that sounds {w} to me",
    "and then it got {w} somehow",
)


@dataclass(frozen=True)
class CueConfig:
    """How strong and how noisy the planted signal is (defaults live here only)."""

    p_true: float = 0.6
    fps: int = 10
    size: int = 64
    sample_rate: int = 16000
    min_dur: float = 1.0
    max_dur: float = 2.0
    audio_noise: float = 0.05
    video_noise: float = 20.0


def pick_cue(rng: np.random.Generator, true_id: int, n_classes: int, p_true: float) -> int:
    """The class whose cue a modality shows: the true one with probability p_true, else a random class."""
    return int(true_id) if rng.random() < p_true else int(rng.integers(n_classes))


def cue_text(rng: np.random.Generator, label_name: str) -> str:
    """A neutral filler sentence carrying one emotion word of `label_name`."""
    words = CUE_WORDS[label_name]
    template = _FILLER[int(rng.integers(len(_FILLER)))]
    return template.format(w=words[int(rng.integers(len(words)))]).capitalize() + "."


def cue_audio(rng: np.random.Generator, cue_id: int, n_classes: int, dur: float, cfg: CueConfig) -> np.ndarray:
    """float32 [S] waveform: class-specific pitch, harmonics and loudness-modulation rate, plus noise."""
    n = int(round(dur * cfg.sample_rate))
    t = np.arange(n, dtype=np.float64) / cfg.sample_rate
    f0 = 160.0 * (2.0 ** (2.0 * cue_id / n_classes))  # spread over two octaves: 160 .. ~600 Hz
    f0 *= 1.0 + 0.02 * rng.standard_normal()
    wave = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2 * f0 * t) + 0.25 * np.sin(2 * np.pi * 3 * f0 * t)
    rate = 1.5 + 1.5 * (cue_id % 4)  # syllable-like energy modulation
    level = 0.15 + 0.35 * (cue_id + 1) / n_classes  # louder for higher class ids: energy is a cue too
    env = level * (0.6 + 0.4 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # no clicks at the edges
    sig = wave / 1.75 * env * fade + cfg.audio_noise * rng.standard_normal(n)
    return sig.astype(np.float32)


def class_colour(cue_id: int, n_classes: int) -> np.ndarray:
    """A saturated RGB colour per class, hues spread evenly: float [3] in 0..255."""
    h = cue_id / n_classes
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # HSV->RGB with s = v = 1
    return 40.0 + 200.0 * rgb


def cue_frames(rng: np.random.Generator, cue_id: int, n_classes: int, n_frames: int, cfg: CueConfig) -> np.ndarray:
    """uint8 [F, H, W, 3]: class-coloured background, a wandering grey distractor square, pixel noise."""
    s = cfg.size
    base = np.broadcast_to(class_colour(cue_id, n_classes), (n_frames, s, s, 3)).copy()
    side = s // 4
    x, y = rng.integers(0, s - side, size=2)
    dx, dy = rng.integers(-2, 3, size=2)
    for i in range(n_frames):
        xi = int(np.clip(x + dx * i, 0, s - side))
        yi = int(np.clip(y + dy * i, 0, s - side))
        base[i, yi : yi + side, xi : xi + side] = 128.0
    base += cfg.video_noise * rng.standard_normal(base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def grey_frames(rng: np.random.Generator, n_frames: int, cfg: CueConfig) -> np.ndarray:
    """uint8 [F, H, W, 3] neutral grey noise (IEMOCAP dialog video between turns)."""
    base = 110.0 + cfg.video_noise * rng.standard_normal((n_frames, cfg.size, cfg.size, 3))
    return np.clip(base, 0, 255).astype(np.uint8)
