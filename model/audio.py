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
from dataclasses import dataclass
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
    try:
        f = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    except OSError:
        f = None  # libsndfile names the fault
    layout = None
    if f is not None:
        try:
            layout = _wav_layout(f.read(HEAD_BYTES))
            if layout is not None and layout.pcm16:
                decoded = _read_pcm16(f, layout)
                if decoded is not None:
                    return decoded
        except (OSError, AttributeError):
            pass
        finally:
            if f is not source:
                f.close()
    declared = layout.frames if layout is not None else None
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


# ---- RIFF/WAVE headers, and 16-bit PCM read directly ------------------------------------------------
HEAD_BYTES = 1 << 16  # a WAV header (its chunks before `data`) is looked for in this many leading bytes
_PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_PCM after its tag
PCM16_SCALE = np.float32(1 / 32768)  # libsndfile's int16 -> float normalisation (pcm.c), a power of two: exact


@dataclass(frozen=True)
class WavLayout:
    """What a RIFF/WAVE header says: its format (`fmt `) and where its `data` chunk lies."""

    rate: int
    channels: int
    format_tag: int  # 1 PCM, 3 IEEE float, ...; WAVE_FORMAT_EXTENSIBLE resolved to its sub-format
    bits: int
    block_align: int
    data_offset: int
    data_bytes: int | None  # None: a streaming writer left the size unset (0 or 0xFFFFFFFF)

    @property
    def frames(self) -> int | None:
        return self.data_bytes // self.block_align if self.data_bytes is not None and self.block_align else None

    @property
    def pcm16(self) -> bool:
        return (self.format_tag == 1 and self.bits == 16 and 0 < self.channels <= 1024
                and self.block_align == 2 * self.channels and self.rate > 0 and self.data_bytes is not None)


def _wav_layout(head: bytes) -> WavLayout | None:
    """The layout of a RIFF/WAVE file from its leading bytes; None: not a WAV, or no `fmt ` and `data` chunk in them."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt " and size >= 16 and pos + 24 <= len(head):
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID's first two bytes are the real tag
                extensible = size >= 40 and pos + 48 <= len(head)
                valid_bits = struct.unpack_from("<H", head, pos + 26)[0] if extensible else 0
                guid = head[pos + 32 : pos + 48] if extensible else b""
                tag = struct.unpack_from("<H", guid)[0] if guid[2:] == _PCM_GUID_TAIL else -1
                if valid_bits not in (0, bits):  # e.g. 12 valid bits in a 16-bit container: libsndfile's business
                    tag = -1
            fmt = (tag, channels, rate, bits, block_align)
        if cid == b"data":
            if fmt is None:
                return None
            tag, channels, rate, bits, block_align = fmt
            data_bytes = None if size in (0, 0xFFFFFFFF) else size
            return WavLayout(rate, channels, tag, bits, block_align, pos + 8, data_bytes)
        pos += 8 + size + (size & 1)
    return None


PCM16_BLOCK_BYTES = 1 << 16  # PCM read and converted at a time: its buffers stay in the cache, below malloc's mmap threshold (128 KB: 0.3 ms against 0.75 ms at 256 KB for 3 s of stereo)
MAX_INT_DOWNMIX_CHANNELS = 256  # below this an integer channel sum is exact in float32 (256 * 32768 = 2**23)


def _read_pcm16(f: BinaryIO, layout: WavLayout) -> tuple[np.ndarray, int] | None:
    """A 16-bit PCM WAV's samples as mono float32, equal to libsndfile's float read (x / 32768, then the channel
    mean of `_mono`), from the declared `data` chunk; about 6x faster than libsndfile for a 3 s clip (its float
    conversion and per-file setup). None when the file holds less than the header declares: libsndfile then
    reads what there is and the truncation is reported as for any other file.

    Several channels are summed as integers, then scaled and divided: every partial sum of `_mono`'s float32
    channel sums is an integer times 2**-15 below 2**24 of them, so exact, and the results are bit-equal, without
    a float copy of every channel (44.1 kHz stereo: 0.25 ms for 3 s against 1.4 ms)."""
    frames, channels = layout.frames, layout.channels
    out = np.empty(frames, np.float32)
    f.seek(layout.data_offset)
    block = max(1, min(frames, PCM16_BLOCK_BYTES // layout.block_align))
    pcm = np.empty(block * channels, "<i2")
    total = np.empty(block, np.int32) if 1 < channels < MAX_INT_DOWNMIX_CHANNELS else None
    done = 0
    while done < frames:
        n = min(block, frames - done)
        raw = pcm[: n * channels]
        if not _read_into(f, raw):
            return None
        dest = out[done : done + n]
        if channels == 1:
            np.multiply(raw, PCM16_SCALE, out=dest)
        elif total is not None:
            frame, acc = raw.reshape(n, channels), total[:n]
            np.add(frame[:, 0], frame[:, 1], out=acc, dtype=np.int32)
            for c in range(2, channels):
                np.add(acc, frame[:, c], out=acc)
            np.multiply(acc, PCM16_SCALE, out=dest, dtype=np.float32)
            dest /= np.float32(channels)
        else:
            dest[:] = _mono(raw.reshape(n, channels) * PCM16_SCALE)
        done += n
    return out, layout.rate


def _read_into(f: BinaryIO, array: np.ndarray) -> bool:
    """Fill `array` from `f`; False if the file ends first."""
    view, got = memoryview(array).cast("B"), 0
    readinto = getattr(f, "readinto", None)
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:  # a file object without readinto
            chunk = f.read(len(view) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            return False
        got += n
    return True


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
