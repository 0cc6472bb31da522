"""CPU stage: read each input's bytes with fsspec, decode, downmix, resample to 16 kHz.

A file that cannot be read or decoded becomes a row with `error` set and an empty waveform;
the job goes on. Works on plain dict batches, so it is testable without Ray.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from model.audio import SAMPLE_RATE, AudioDecodeError, decode_audio

from .sources import filesystem

# Inputs larger than this are refused before decoding: 4 GiB is ~9 h of 16-bit stereo 44.1 kHz.
MAX_INPUT_BYTES = 4 * 1024**3


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole object at `uri`. Raises OSError/FileNotFoundError naming it."""
    fs, path = filesystem(uri, storage_options)
    size = fs.size(path)
    if size is not None and size > MAX_INPUT_BYTES:
        raise AudioDecodeError(uri, f"file is {size / 1024**3:.1f} GiB, over the {MAX_INPUT_BYTES // 1024**3} GiB limit")
    with fs.open(path, "rb") as f:
        return f.read()


def decode_one(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, int | None, str | None]:
    """(waveform (N,) float32 at 16 kHz, original sample rate or None, error or None) for one input."""
    try:
        data = read_bytes(uri, storage_options)
        samples, sr = decode_audio(data, SAMPLE_RATE, name=uri)
    except AudioDecodeError as e:
        return _EMPTY, None, f"AudioDecodeError: {e.reason}"
    except FileNotFoundError:
        return _EMPTY, None, "ReadError: file not found"
    except (OSError, PermissionError) as e:  # network errors, permissions, s3fs ClientError wrappers
        return _EMPTY, None, f"ReadError: {type(e).__name__}: {e}"
    return samples, sr, None


_EMPTY = np.zeros(0, dtype=np.float32)


def decode_batch(batch: dict[str, Any], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"audio_uri": (B,)}` -> columns audio_uri, waveform, num_samples, sample_rate, duration_s, error."""
    uris = [str(u) for u in batch["audio_uri"]]
    waves, rates, errors = [], [], []
    for uri in uris:
        wave, sr, err = decode_one(uri, storage_options)
        waves.append(wave)
        rates.append(sr if sr is not None else -1)
        errors.append(err)
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
    }
