"""Media writers for the synthetic corpora (PyAV for containers, stdlib `wave` for IEMOCAP's plain wavs).

Frames are tiny (64x64 at 10 fps) and audio is 16 kHz mono so a 20-dialogue corpus is written in seconds.
"""
from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray | None, fps: int, sample_rate: int) -> None:
    """Write an MELD-style mp4: H.264 video (`frames` uint8 [F, H, W, 3]) + AAC mono audio (float32 [S]).

    `audio=None` writes a clip without an audio stream (a planted fault).
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as out:
        # one thread and a fast preset: the frames are tiny and determinism matters more than speed-ups
        vs = _video_stream(out, "libx264", frames, fps, {"preset": "ultrafast", "crf": "23", "threads": "1"})
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "mono"
            as_.bit_rate = 32000
            as_.codec_context.options = {"aac_coder": "fast"}  # the default two-loop coder is ~20% slower
        _encode_video(out, vs, frames, fps)
        if as_ is not None:
            _encode_audio(out, as_, audio, sample_rate)


def _video_stream(out, codec: str, frames: np.ndarray, fps: int, options: dict[str, str]):
    """Add a yuv420p video stream sized for `frames` uint8 [F, H, W, 3]."""
    vs = out.add_stream(codec, rate=fps)
    vs.width, vs.height = int(frames.shape[2]), int(frames.shape[1])
    vs.pix_fmt = "yuv420p"
    vs.codec_context.options = options
    return vs


def _encode_video(out, stream, frames: np.ndarray, fps: int) -> None:
    """Encode `frames` uint8 [F, H, W, 3] at `fps` (pts = frame index) and flush the encoder."""
    import av

    for i, img in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for pkt in stream.encode(frame):
            out.mux(pkt)
    for pkt in stream.encode():
        out.mux(pkt)


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    import av

    pcm = np.clip(audio, -1.0, 1.0).astype(np.float32)[None, :]  # planar float [1, S]
    frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    for pkt in stream.encode(frame):
        out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)


def write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write an IEMOCAP-style dialog video: MPEG-4 part 2 in AVI, `frames` uint8 [F, H, W, 3], no audio."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="avi") as out:
        vs = _video_stream(out, "mpeg4", frames, fps, {"qscale": "3", "threads": "1"})
        _encode_video(out, vs, frames, fps)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM mono wav from float32 [S] in [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its bytes (a planted 'truncated download' fault)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
