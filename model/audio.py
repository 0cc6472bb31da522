"""Audio decoding shared by `ParakeetTDT.transcribe`, the Ray pipeline and fine-tuning.

libsndfile (soundfile) first, for what it reads and decodes faster (wav, flac, ogg/vorbis, mp3, aiff, ...); FFmpeg
through PyAV (`av`, whose wheels bundle FFmpeg) for everything else (and Opus): m4a/mp4/aac, mov, mkv/webm, wma/asf,
ac3/eac3, amr, 3gp and other containers, audio or video. The first audio stream is decoded, as a stream
(memory is the decoded audio, not the file), downmixed to mono by the channel mean and resampled to the
model rate with soxr (HQ).

Damaged files are errors, not short transcripts (`AudioDecodeError.kind`):
- `truncated`: the container declares a length (a WAV data chunk, FLAC's STREAMINFO, a stream or
  container duration) and the decoded audio falls short of it by more than TRUNCATION_TOLERANCE_S
  (more than a codec frame, less than any real loss), or the decoder stops on an error mid-stream;
- `empty` (0 bytes, or no samples), `no_audio` (no audio stream: a silent video), `decode` (not audio
  at all, or an unreadable header), `not_finite` (NaN/inf samples).
"""
from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # Hz, what every Parakeet TDT model expects
TRUNCATION_TOLERANCE_S = 0.15  # longer than any codec frame (AAC at 8 kHz: 128 ms), shorter than a word

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


class AudioDecodeError(ValueError):
    """An input could not be decoded as audio. `source` names the culprit, `kind` the class of fault."""

    def __init__(self, source: str, reason: str, kind: str = "decode"):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


def _name(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", "<bytes>")


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode `source` (path, bytes or seekable binary file) to mono float32 at `sample_rate`.

    Returns (samples (N,) float32, original sample rate in Hz).
    Raises AudioDecodeError naming the source for missing, empty, truncated, corrupt or unsupported input.
    """
    label = name or _name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError(label, "empty file (0 bytes)", "empty")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise AudioDecodeError(label, "file not found", "read")
        if os.path.getsize(source) == 0:
            raise AudioDecodeError(label, "empty file (0 bytes)", "empty")
    elif _remaining(source) == 0:
        raise AudioDecodeError(label, "empty file (0 bytes)", "empty")
    decoded = _decode_soundfile(source, label)
    if decoded is None:  # not a format libsndfile knows: FFmpeg
        _rewind(source)
        decoded = _decode_ffmpeg(source, label)
    mono, sr = decoded
    if mono.shape[0] == 0:
        raise AudioDecodeError(label, "no audio samples (zero length)", "empty")
    if not np.isfinite(mono).all():
        raise AudioDecodeError(label, "audio contains NaN or infinite samples", "not_finite")
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def _remaining(f: BinaryIO) -> int | None:
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None


def _rewind(source) -> None:
    if hasattr(source, "seek"):
        source.seek(0)


def _check_length(label: str, declared_frames: int | None, decoded_frames: int, rate: int) -> None:
    if declared_frames is None or declared_frames <= 0 or rate <= 0:
        return
    if (declared_frames - decoded_frames) / rate > TRUNCATION_TOLERANCE_S:
        raise AudioDecodeError(label, f"truncated: header declares {declared_frames / rate:.4g} s, "
                                      f"file holds {decoded_frames / rate:.4g} s", "truncated")


# ---- libsndfile ------------------------------------------------------------------------------------
BLOCK_FRAMES = 1 << 20  # frames read (and downmixed) at a time: memory holds mono audio, not every channel


def _mono(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by the channel mean, bit-equal to `block.mean(axis=1, dtype=float32)`
    (NeMo's downmix). Below 8 channels numpy sums a row in order, so the columns are added in order:
    a (frames, 2) mean is about 15x slower than that (2.3 ms against 0.15 ms per 3 s of 44.1 kHz stereo)."""
    channels = block.shape[1]
    if channels >= 8:  # numpy's pairwise order from 8 on
        return block.mean(axis=1, dtype=np.float32)
    mono = block[:, 0].copy()
    for c in range(1, channels):
        mono += block[:, c]
    if channels > 1:
        mono /= np.float32(channels)
    return mono


def _decode_soundfile(source, label: str) -> tuple[np.ndarray, int] | None:
    """(mono float32 (N,), rate), or None when libsndfile does not recognise the format."""
    declared = _wav_declared_frames(source)
    _rewind(source)
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None  # unknown to libsndfile (m4a, mp4, ...), or damaged: FFmpeg gets its say
    with f:
        if (f.format, f.subtype) == ("OGG", "OPUS"):
            return None  # FFmpeg decodes Opus faster (596x against 367x real time per core, tests/perf/bench_decode.py)
        rate, frames = f.samplerate, f.frames
        if f.format not in ("WAV", "WAVEX", "RF64", "W64"):
            declared = frames if f.format == "FLAC" else None  # FLAC's STREAMINFO total; others: unknown
        blocks = []
        try:
            while True:
                # mono: libsndfile's own buffer is the waveform (no per-channel copy)
                block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=f.channels > 1)
                if not len(block):
                    break
                blocks.append(_mono(block) if block.ndim == 2 else block)
        except (sf.LibsndfileError, RuntimeError) as e:
            reason = getattr(e, "error_string", None) or str(e)
            raise AudioDecodeError(label, f"truncated: the decoder stopped mid-stream ({reason})", "truncated") from e
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    _check_length(label, declared, len(data), rate)
    return data, rate


def _wav_declared_frames(source) -> int | None:
    """Frames a RIFF/WAVE header's data chunk declares (None: not a WAV, or a streaming size)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(1 << 16)
        else:
            head = source.read(1 << 16)
    except (OSError, AttributeError):
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        if cid == b"data":
            if size in (0, 0xFFFFFFFF) or not block_align:  # streaming writers leave the size unset
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


# ---- FFmpeg (PyAV) -----------------------------------------------------------------------------------
def _decode_ffmpeg(source, label: str) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(source if not isinstance(source, os.PathLike) else os.fspath(source), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise AudioDecodeError(label, f"cannot decode audio (not a format libsndfile or FFmpeg reads: {e})") from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AudioDecodeError(label, f"no audio stream (streams: {', '.join(kinds)})", "no_audio")
        stream = container.streams.audio[0]  # the first audio stream, as ffmpeg picks by default
        rate = stream.codec_context.sample_rate or stream.rate
        declared = _ffmpeg_declared_frames(container, stream, rate)
        chunks, n = [], 0
        resampler = None
        try:
            for frame in container.decode(stream):
                if resampler is None:  # packed float32, same rate and channels: downmix and resampling are ours
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
                    rate = frame.sample_rate
                for out in resampler.resample(frame):
                    x = out.to_ndarray().reshape(-1, len(out.layout.channels))  # (samples, channels)
                    chunks.append(_mono(x))
                    n += len(x)
        except av.error.FFmpegError as e:
            if n == 0:
                raise AudioDecodeError(label, f"cannot decode audio ({e})") from e
            raise AudioDecodeError(label, f"truncated: the decoder stopped after {n / rate:.4g} s ({e})", "truncated") from e
    if n == 0:  # FFmpeg guessed a format, but nothing in the file decodes as its audio
        raise AudioDecodeError(label, "cannot decode audio (no decodable audio samples)")
    data = np.concatenate(chunks)
    _check_length(label, declared, n, rate)
    return data, int(rate)


def _ffmpeg_declared_seconds(container, stream) -> float | None:
    """The stream's declared duration (else the container's) in seconds, if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE units
    return None


def _ffmpeg_declared_frames(container, stream, rate: int) -> int | None:
    """The stream's declared length in samples at `rate`, if any."""
    seconds = _ffmpeg_declared_seconds(container, stream)
    return None if seconds is None else int(seconds * rate)


def probe_duration(source) -> float | None:
    """Seconds of audio a file's header declares (libsndfile, else FFmpeg's container metadata), without
    decoding; None when neither says. For planning only (decode_audio checks the real length)."""
    try:
        info = sf.info(source)
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    _rewind(source)
    try:
        import av

        with av.open(source if not isinstance(source, os.PathLike) else os.fspath(source)) as container:
            if container.streams.audio:
                return _ffmpeg_declared_seconds(container, container.streams.audio[0]) or None
    except Exception:  # noqa: BLE001 - an unreadable header: no estimate
        return None
    return None
