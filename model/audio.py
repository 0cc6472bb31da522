"""Audio decoding shared by `ParakeetTDT.transcribe` and the Ray pipeline.

Decodes any format libsndfile reads (wav, flac, ogg/vorbis, opus, mp3 with libsndfile >= 1.1),
downmixes to mono and resamples to the model rate with soxr (high quality).
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # Hz, what every Parakeet TDT model expects

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


class AudioDecodeError(ValueError):
    """An input could not be decoded as audio. `source` names the culprit."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _name(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", "<bytes>")


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode `source` (path, bytes or binary file) to mono float32 at `sample_rate`.

    Returns (samples (N,) float32 in [-1, 1], original sample rate in Hz).
    Raises AudioDecodeError naming the source for missing, empty, corrupt or unsupported input.
    """
    label = name or _name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError(label, "empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise AudioDecodeError(label, "file not found")
        if os.path.getsize(source) == 0:
            raise AudioDecodeError(label, "empty file (0 bytes)")
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = getattr(e, "error_string", None) or str(e)  # libsndfile's reason, without the BytesIO repr
        raise AudioDecodeError(label, f"cannot decode audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioDecodeError(label, "no audio samples (zero length)")
    if not np.isfinite(data).all():
        raise AudioDecodeError(label, "audio contains NaN or infinite samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)
