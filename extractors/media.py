"""Media decoding for the extractors: audio with PyAV, video frames with decord.

decord's own audio reader returns NaN for stereo AAC, so audio always goes through PyAV.
Every failure is a `MediaError` naming the path and the reason, so the feature run can record it
per utterance (or stop with --strict).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from mer_pipe.common.errors import MediaError

Segment = Sequence[float] | None


def _check_segment(path: str, segment: Segment) -> tuple[float, float] | None:
    if segment is None:
        return None
    if len(segment) != 2:
        raise MediaError(f"{path}: segment {list(segment)!r} must be [start, end] in seconds")
    start, end = float(segment[0]), float(segment[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise MediaError(f"{path}: empty or invalid segment [{start}, {end}] (need 0 <= start < end seconds)")
    return start, end


def _check_exists(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{path}: file not found; check the corpus root and the manifest's media path")
    if not p.is_file():
        raise MediaError(f"{path}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes)")


def load_audio(path: str | Path, sample_rate: int = 16000, segment: Segment = None) -> np.ndarray:
    """Decode the first audio stream: mono mixdown, resampled to `sample_rate`, float32 [S] in [-1, 1].

    segment: [start, end] seconds to cut (the decoder seeks to start, so long dialog files stay cheap).
    """
    import av

    path = str(path)
    _check_exists(path)
    seg = _check_segment(path, segment)
    try:
        container = av.open(path)
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot open ({exc.__class__.__name__}: {exc}); file is truncated or not media") from None
    with container:
        if not container.streams.audio:
            kinds = ", ".join(f"{s.type}:{s.codec_context.name}" for s in container.streams) or "none"
            raise MediaError(f"{path}: no audio stream (streams: {kinds}); point the manifest's audio at a file with sound")
        stream = container.streams.audio[0]
        declared = _declared_seconds(path, container, stream)
        t0 = 0.0
        if seg is not None and seg[0] > 0 and stream.time_base is not None:
            try:
                container.seek(int(seg[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0)  # unseekable stream: decode from the start instead
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        have = 0  # resampled samples collected so far
        first = True
        try:
            for frame in container.decode(stream):
                if first:
                    # time of the first decoded sample: the seek lands at or before the segment start
                    t0 = float(frame.time) if frame.time is not None else 0.0
                    first = False
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    chunks.append(arr)
                    have += arr.shape[0]
                if seg is not None and t0 + have / sample_rate >= seg[1]:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: undecodable or truncated audio ({exc.__class__.__name__}: {exc})") from None
    wav = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if seg is not None:
        lo = max(0, int(round((seg[0] - t0) * sample_rate)))
        hi = max(0, int(round((seg[1] - t0) * sample_rate)))
        wav = wav[lo:hi]
    if wav.size == 0:
        where = f"segment [{seg[0]}, {seg[1]}] s" if seg is not None else "file"
        raise MediaError(f"{path}: no audio samples in the {where} (empty, truncated, or segment past the end)")
    if not np.isfinite(wav).all():
        raise MediaError(f"{path}: decoded audio holds non-finite samples; the file is corrupt")
    got = wav.size / sample_rate
    if seg is None and declared is not None and got < 0.9 * declared - 0.05:
        # a cut-off download still decodes; a silent half-utterance would be a wrong feature, not a failure
        raise MediaError(f"{path}: truncated audio: header declares {declared:.2f} s, only {got:.2f} s decode; "
                         "re-copy the file from the original archive")
    return np.clip(wav, -1.0, 1.0)


def _declared_seconds(path: str, container, stream) -> float | None:
    """Duration the file header declares (None when it declares none). FFmpeg clamps a WAV's duration
    to the bytes present, so a WAV's RIFF header is read directly."""
    if path.lower().endswith(".wav"):
        import wave

        try:
            with wave.open(path, "rb") as w:
                return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError, OSError):
            pass  # not plain PCM: fall back to what the demuxer says
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def frame_indices(first: int, count: int, num_frames: int) -> np.ndarray:
    """Indices at the centres of `num_frames` equal bins over [first, first + count).
    Clips with fewer than `num_frames` frames repeat frames."""
    centres = (np.arange(num_frames) + 0.5) * count / num_frames
    return first + np.minimum(np.floor(centres).astype(np.int64), count - 1)


def load_frames(path: str | Path, num_frames: int = 15, segment: Segment = None) -> np.ndarray:
    """Uniformly sample `num_frames` RGB frames over the clip (or segment): uint8 [F, H, W, 3]."""
    path = str(path)
    _check_exists(path)
    seg = _check_segment(path, segment)
    if num_frames < 1:
        raise MediaError(f"{path}: num_frames={num_frames} must be >= 1")
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MediaError(f"{path}: no decodable video stream ({reason[:200]})") from None
    total = len(vr)
    if total == 0:
        raise MediaError(f"{path}: video stream has no frames")
    first, count = 0, total
    if seg is not None:
        fps = float(vr.get_avg_fps()) or 25.0
        first = int(math.floor(seg[0] * fps))
        last = min(total, int(math.ceil(seg[1] * fps)))
        count = last - first
        if count <= 0:
            raise MediaError(
                f"{path}: segment [{seg[0]}, {seg[1]}] s holds no frames (clip has {total} frames at {fps:.2f} fps)"
            )
    idx = frame_indices(first, count, num_frames)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MediaError(f"{path}: undecodable or truncated video ({reason[:200]})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise MediaError(f"{path}: decoded frames have shape {frames.shape}, expected [{num_frames}, H, W, 3]")
    return np.ascontiguousarray(frames, dtype=np.uint8)
