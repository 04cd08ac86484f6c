"""Media helpers on small files written here with PyAV: H.264 + AAC (mono and stereo) mp4, wav, avi."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mer_pipe.common.errors import MediaError
from mer_pipe.extractors.media import frame_indices, load_audio, load_frames

SR_IN = 44100  # source rate differs from 16 kHz so resampling is exercised
FPS = 10


def _tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if channels == 1:
        return mono[None, :]
    # right channel louder than left so the mixdown is checkable
    return np.stack([0.5 * mono, mono]).astype(np.float32)


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    # frame i is flat grey level 8*i: sampled indices can be read back from pixel values
    return np.stack([np.full((h, w, 3), 8 * i, np.uint8) for i in range(n)])


def write_mp4(path: Path, n_frames: int, seconds: float, channels: int | None = 1) -> Path:
    import av

    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "crf": "0", "threads": "1"}
        as_ = None
        if channels:
            as_ = out.add_stream("aac", rate=SR_IN)
            as_.layout = "mono" if channels == 1 else "stereo"
        for i, img in enumerate(_frames(n_frames)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if as_ is not None:
            _encode_pcm(out, as_, _tone(seconds, SR_IN, channels=channels), SR_IN)
    return path


def _encode_pcm(out, stream, pcm: np.ndarray, sr: int) -> None:
    """Encode planar float audio [C, S] as one frame at pts 0 and flush the encoder."""
    import av

    frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout=stream.layout.name)
    frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
    for pkt in stream.encode(frame):
        out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)


def write_wav(path: Path, seconds: float, sr: int = SR_IN) -> Path:
    import av

    with av.open(str(path), mode="w", format="wav") as out:
        st = out.add_stream("pcm_s16le", rate=sr)
        st.layout = "mono"
        # a ramp: the value at time t tells where a segment cut landed
        _encode_pcm(out, st, np.linspace(-0.9, 0.9, int(seconds * sr), dtype=np.float32)[None, :], sr)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "mono": write_mp4(d / "mono.mp4", 30, 3.0, channels=1),
        "stereo": write_mp4(d / "stereo.mp4", 30, 3.0, channels=2),
        "silent": write_mp4(d / "silent.mp4", 30, 3.0, channels=None),
        "short": write_mp4(d / "short.mp4", 4, 0.4, channels=1),
        "wav": write_wav(d / "ramp.wav", 4.0),
    }
    data = files["mono"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    files["truncated"] = d / "truncated.mp4"
    (d / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    files["garbage"] = d / "garbage.mp4"
    return files


def test_audio_mono_mp4_resampled(media):
    wav = load_audio(media["mono"])
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.shape[0] / 16000 - 3.0) < 0.1
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    # a 440 Hz tone survives resampling: dominant FFT bin
    spec = np.abs(np.fft.rfft(wav[4000:20000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) < 5


def test_audio_stereo_aac_has_no_nan_and_mixes_down(media):
    wav = load_audio(media["stereo"])
    assert np.isfinite(wav).all()
    # mixdown of 0.25 and 0.5 amplitude channels: peak well above the quiet channel alone
    assert 0.3 < np.abs(wav[4000:20000]).max() < 0.6


def test_audio_wav_segment_cut(media):
    full = load_audio(media["wav"])
    seg = load_audio(media["wav"], segment=(1.0, 2.5))
    assert abs(seg.shape[0] - 1.5 * 16000) <= 2
    # the ramp value at the cut matches the full decode at 1.0 s
    np.testing.assert_allclose(seg[:100], full[16000:16100], atol=2e-3)
    assert load_audio(media["wav"], sample_rate=8000, segment=(0.0, 1.0)).shape[0] == 8000


def test_audio_errors(media, tmp_path):
    cases = {
        "missing": (tmp_path / "nope.mp4", "not found"),
        "silent": (media["silent"], "no audio stream"),
        "truncated": (media["truncated"], "truncated"),
        "garbage": (media["garbage"], "cannot open"),
    }
    for _, (path, reason) in cases.items():
        with pytest.raises(MediaError, match=reason) as info:
            load_audio(path)
        assert str(path) in str(info.value)
    with pytest.raises(MediaError, match="segment"):
        load_audio(media["wav"], segment=(10.0, 12.0))  # past the end of a 4 s file
    with pytest.raises(MediaError, match="segment"):
        load_audio(media["wav"], segment=(2.0, 2.0))


def test_frame_indices_uniform_and_repeat():
    assert frame_indices(0, 30, 15).tolist() == list(range(1, 30, 2))
    assert frame_indices(10, 3, 6).tolist() == [10, 10, 11, 11, 12, 12]
    assert frame_indices(0, 1, 15).tolist() == [0] * 15


def test_frames_uniform_sampling(media):
    frames = load_frames(media["mono"], num_frames=15)
    assert frames.dtype == np.uint8 and frames.shape == (15, 48, 64, 3)
    levels = np.round(frames.reshape(15, -1).mean(1) / 8).astype(int)
    assert levels.tolist() == list(range(1, 30, 2))


def test_frames_segment_and_short_clip(media):
    frames = load_frames(media["mono"], num_frames=5, segment=(1.0, 2.0))  # frames 10..19
    levels = np.round(frames.reshape(5, -1).mean(1) / 8).astype(int)
    assert levels.tolist() == [11, 13, 15, 17, 19]
    short = load_frames(media["short"], num_frames=15)  # 4 frames repeated
    assert short.shape[0] == 15
    levels = np.round(short.reshape(15, -1).mean(1) / 8).astype(int)
    assert sorted(set(levels.tolist())) == [0, 1, 2, 3]


def test_frames_errors(media, tmp_path):
    for path, reason in [(tmp_path / "nope.mp4", "not found"), (media["wav"], "video"),
                         (media["garbage"], "video"), (media["truncated"], "video")]:
        with pytest.raises(MediaError, match=reason) as info:
            load_frames(path)
        assert str(path) in str(info.value)
    with pytest.raises(MediaError, match="no frames"):
        load_frames(media["mono"], segment=(50.0, 60.0))


def test_truncated_wav_is_a_media_error_not_half_a_feature(tmp_path):
    """FFmpeg decodes a cut-off WAV without complaint; the RIFF header says how long it should be."""
    import wave

    path = tmp_path / "cut.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) / 10) * 8000).astype("<i2").tobytes())
    assert load_audio(path).shape == (16000,)  # intact: fine
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated audio: header declares 1.00 s"):
        load_audio(path)
