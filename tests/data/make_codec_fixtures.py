"""Build the codec corpus under tests/data/codecs/ (run rarely; outputs are committed, ~1 MB).

    python tests/data/make_codec_fixtures.py

PyAV's wheels bundle FFmpeg with its encoders, so no system ffmpeg is needed. Sources are the
example clips (examples/audio/*.wav, 16 kHz mono sentences the bundled demo model never saw in
training). What it makes:
- good/: every container and codec users bring (CODECS): lossless ones (flac, alac in m4a, flac in
  mkv, pcm in mov) and lossy ones (aac in m4a/mp4/mov/ADTS/3gp, opus in ogg/webm/mkv, vorbis in ogg,
  mp3, wma, ac3, eac3, amr), some with a video stream (mp4, webm, mkv, mov), and a video with two
  audio streams (the first holds the sentence). Names are <clip>.<label>.<ext>.
- bad/: damaged and unusable inputs with the error kind each must give (BAD, also in bad/expected.json).
"""
from __future__ import annotations

import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "codecs"
SOURCES = sorted((REPO / "examples" / "audio").glob("*.wav"))

# label: (container format, extension, audio codec, audio rate, video codec or None, lossless)
CODECS = {
    "flac": ("flac", "flac", "flac", 16000, None, True),
    "alac": ("ipod", "m4a", "alac", 16000, None, True),
    "mkv-flac": ("matroska", "mkv", "flac", 16000, None, True),
    "mov-pcm": ("mov", "mov", "pcm_s16le", 16000, None, True),
    "aac": ("ipod", "m4a", "aac", 16000, None, False),
    "mp4-video": ("mp4", "mp4", "aac", 16000, "libx264", False),
    "mov-video": ("mov", "mov", "aac", 44100, "mpeg4", False),
    "adts": ("adts", "aac", "aac", 16000, None, False),
    "3gp-amr": ("3gp", "3gp", "libopencore_amrnb", 8000, None, False),
    "amr": ("amr", "amr", "libopencore_amrnb", 8000, None, False),
    "opus": ("ogg", "opus", "libopus", 48000, None, False),
    "webm-video": ("webm", "webm", "libopus", 48000, "libvpx", False),
    "mkv-opus": ("matroska", "mkv", "libopus", 48000, None, False),
    "vorbis": ("ogg", "ogg", "vorbis", 16000, None, False),  # written by libsndfile (FFmpeg's encoder is experimental)
    "mp3": ("mp3", "mp3", "libmp3lame", 16000, None, False),
    "wma": ("asf", "wma", "wmav2", 16000, None, False),
    "ac3": ("ac3", "ac3", "ac3", 48000, None, False),
    "eac3": ("eac3", "eac3", "eac3", 48000, None, False),
}

BIT_RATES = {"wmav2": 64000, "aac": 64000, "libopus": 32000, "libmp3lame": 64000,  # typical podcast / voice-note rates
             "libopencore_amrnb": 12200}  # AMR-NB 12.2 kbps, what phones use (the encoder defaults to 5.15)

# name: expected error kind
BAD = {
    "truncated.wav": "truncated",  # the header promises seconds; 60 bytes survive
    "truncated.flac": "truncated",  # cut in half
    "truncated.m4a": "truncated",  # a partial upload: index first (faststart), media cut
    "lying-header.wav": "truncated",  # the data chunk declares 10x what the file holds
    "video-only.mp4": "no_audio",  # a video without an audio stream
    "empty.m4a": "empty",  # 0 bytes
    "not-audio.mp4": "decode",  # text with a video extension
    "silent-header.wav": "empty",  # a valid WAV header with no samples
}


def encode(samples: np.ndarray, path: Path, fmt: str, codec: str, rate: int, video: str | None,
           second: np.ndarray | None = None, options: dict | None = None) -> None:
    """16 kHz mono float32 `samples` -> `path` with the given container/codec (+ a tiny video stream,
    + a second audio stream)."""
    with av.open(str(path), mode="w", format=fmt, options=options or {}) as out:
        streams = [(out.add_stream(codec, rate=rate, layout="mono"), samples)]
        if second is not None:
            streams.append((out.add_stream(codec, rate=rate, layout="mono"), second))
        for stream, _ in streams:
            if codec in BIT_RATES:
                stream.codec_context.bit_rate = BIT_RATES[codec]
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        for stream, x in streams:
            _encode_audio(out, stream, x)
        if vstream is not None:
            seconds = len(samples) / 16000
            for i in range(int(seconds * 10)):
                img = np.full((48, 64, 3), (i * 9) % 255, np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, 10)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))


def _encode_audio(out, stream, samples: np.ndarray) -> None:
    cc = stream.codec_context
    resampler = av.AudioResampler(format=cc.format.name, layout="mono", rate=cc.sample_rate)
    step = 1024
    pts = 0
    for a in range(0, len(samples), step):
        chunk = (samples[a : a + step] * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, pts, Fraction(1, 16000)
        pts += chunk.shape[1]
        for f in resampler.resample(frame):
            out.mux(stream.encode(f))
    for f in resampler.resample(None):
        out.mux(stream.encode(f))
    out.mux(stream.encode(None))


def make_good(clips: dict[str, np.ndarray]) -> None:
    good = OUT / "good"
    good.mkdir(parents=True, exist_ok=True)
    for name, x in clips.items():
        for label, (fmt, ext, codec, rate, video, _) in CODECS.items():
            if codec == "vorbis":
                sf.write(good / f"{name}.{label}.{ext}", x, rate, format="OGG", subtype="VORBIS")
                continue
            options = {"movflags": "faststart"} if fmt in ("mp4", "ipod", "mov") else None
            encode(x, good / f"{name}.{label}.{ext}", fmt, codec, rate, video, options=options)
    first, second = list(clips.values())[:2]
    second = np.pad(second, (0, max(0, len(first) - len(second))))[: len(first)]  # a second language track, say
    encode(first, good / f"{list(clips)[0]}.two-audio-streams.mkv", "matroska", "libopus", 48000, "libvpx", second=second)


def make_bad(clips: dict[str, np.ndarray]) -> None:
    bad = OUT / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    x = next(iter(clips.values()))
    sf.write(bad / "full.wav", x, 16000, subtype="PCM_16")
    (bad / "truncated.wav").write_bytes((bad / "full.wav").read_bytes()[:60])
    data = bytearray((bad / "full.wav").read_bytes())
    size = int.from_bytes(data[40:44], "little")
    data[40:44] = (size * 10).to_bytes(4, "little")  # the data chunk claims ten times the samples
    (bad / "lying-header.wav").write_bytes(bytes(data))
    (bad / "full.wav").unlink()
    sf.write(bad / "full.flac", np.tile(x, 4), 16000)
    raw = (bad / "full.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(raw[: len(raw) // 2])
    (bad / "full.flac").unlink()
    encode(np.tile(x, 4), bad / "full.m4a", "ipod", "aac", 16000, None, options={"movflags": "faststart"})
    raw = (bad / "full.m4a").read_bytes()
    (bad / "truncated.m4a").write_bytes(raw[: len(raw) // 2])
    (bad / "full.m4a").unlink()
    with av.open(str(bad / "video-only.mp4"), mode="w", format="mp4") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    (bad / "empty.m4a").write_bytes(b"")
    (bad / "not-audio.mp4").write_text("this is not a video, it is a note someone saved with the wrong name\n" * 20)
    sf.write(bad / "silent-header.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    (bad / "expected.json").write_text(json.dumps(BAD, indent=1))


def main() -> None:
    clips = {p.stem: sf.read(p, dtype="float32")[0] for p in SOURCES}
    if OUT.exists():
        shutil.rmtree(OUT)
    make_good(clips)
    make_bad(clips)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{sum(1 for _ in OUT.rglob('*.*'))} files, {total / 1024:.0f} KB in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
