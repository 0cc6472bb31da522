"""CPU stage: open each input with fsspec, decode (libsndfile, else FFmpeg), downmix, resample to 16 kHz.

The file is read as a stream through fsspec's buffered file object (an hour of video costs its decoded
audio, not its size). A file that cannot be read or decoded becomes a row with `error` and `error_kind`
set and an empty waveform; the job goes on. Works on plain dict batches, so it is testable without Ray.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from model.audio import SAMPLE_RATE, AudioDecodeError, decode_audio

from .sources import filesystem

# Inputs larger than this are refused before decoding: 4 GiB is ~9 h of 16-bit stereo 44.1 kHz.
MAX_INPUT_BYTES = 4 * 1024**3


def decode_one(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, int | None, str | None, str | None]:
    """(waveform (N,) float32 at 16 kHz, original sample rate or None, error or None, error kind or None)."""
    try:
        fs, path = filesystem(uri, storage_options)
        size = fs.size(path)
        if size is not None and size > MAX_INPUT_BYTES:
            raise AudioDecodeError(uri, f"file is {size / 1024**3:.1f} GiB, over the {MAX_INPUT_BYTES // 1024**3} GiB limit",
                                   "too_large")
        with fs.open(path, "rb") as f:
            samples, sr = decode_audio(f, SAMPLE_RATE, name=uri)
    except AudioDecodeError as e:
        return _EMPTY, None, f"AudioDecodeError: {e.reason}", e.kind
    except FileNotFoundError:
        return _EMPTY, None, "ReadError: file not found", "read"
    except (OSError, PermissionError) as e:  # network errors, permissions, s3fs ClientError wrappers
        return _EMPTY, None, f"ReadError: {type(e).__name__}: {e}", "read"
    return samples, sr, None, None


_EMPTY = np.zeros(0, dtype=np.float32)


def decode_batch(batch: dict[str, Any], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"audio_uri": (B,)}` -> columns audio_uri, waveform, num_samples, sample_rate, duration_s, error."""
    uris = [str(u) for u in batch["audio_uri"]]
    waves, rates, errors, kinds = [], [], [], []
    for uri in uris:
        wave, sr, err, kind = decode_one(uri, storage_options)
        waves.append(wave)
        rates.append(sr if sr is not None else -1)
        errors.append(err)
        kinds.append(kind)
    num_samples = np.array([len(w) for w in waves], dtype=np.int64)
    waveform = np.empty(len(waves), dtype=object)
    waveform[:] = waves
    return {
        "audio_uri": np.array(uris, dtype=object),
        "waveform": waveform,  # (B,) of (N_i,) float32 at 16 kHz; (0,) on error
        "num_samples": num_samples,
        "sample_rate": np.array(rates, dtype=np.int32),  # original rate in Hz; -1 on error
        "duration_s": np.where(num_samples > 0, num_samples / SAMPLE_RATE, np.nan),
        "error": np.array(errors, dtype=object),
        "error_kind": np.array(kinds, dtype=object),  # read, empty, decode, truncated, no_audio, ... (schema.py)
    }
