"""Media probing for `prepare --probe`: is a clip usable at all (demuxes, has the needed streams, decodes)?"""
from __future__ import annotations

from pathlib import Path


def probe_media(path: Path, need_video: bool, need_audio: bool) -> str | None:
    """Open a media file with PyAV; return why it is unusable, or None when it demuxes and decodes.

    Demuxes every packet (cheap, catches truncation) and decodes the first frame of each needed stream.
    """
    import av

    try:
        with av.open(str(path)) as c:
            if need_video and not c.streams.video:
                return "no video stream"
            if need_audio and not c.streams.audio:
                return "no audio stream"
            streams = (list(c.streams.video[:1]) if need_video else []) + (list(c.streams.audio[:1]) if need_audio else [])
            decoded = {s.index: False for s in streams}
            for pkt in c.demux(streams):
                if pkt.size == 0 or decoded.get(pkt.stream.index, True):
                    continue
                if pkt.decode():
                    decoded[pkt.stream.index] = True
            if not all(decoded.values()):
                return "no decodable frames (truncated?)"
    except (av.error.FFmpegError, OSError) as exc:  # PyAV raises FFmpegError subclasses for broken files
        return f"undecodable ({getattr(exc, 'strerror', None) or type(exc).__name__})"
    return None
