"""CPU stage: open each input with fsspec, decode (libsndfile, else FFmpeg), downmix, resample to 16 kHz.

The file is read as a stream through fsspec's buffered file object (an hour of video costs its decoded
audio, not its size); a local file is opened by the decoder itself. A file that cannot be read or
decoded becomes a row with `error` and `error_kind` set and an empty waveform; the job goes on. Works on
plain dict batches, so it is testable without Ray.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from model.audio import SAMPLE_RATE, AudioDecodeError, decode_audio

from .sources import filesystem, is_local

# Inputs larger than this are refused before decoding: 4 GiB is ~9 h of 16-bit stereo 44.1 kHz.
MAX_INPUT_BYTES = 4 * 1024**3


def decode_one(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, int | None, str | None, str | None]:
    """(waveform (N,) float32 at 16 kHz, original sample rate or None, error or None, error kind or None)."""
    try:
        if "://" in uri or "::" in uri:
            fs, path = filesystem(uri, storage_options)
            size = fs.size(path)
        else:  # a plain local path (what a local listing gives): fsspec's URL parsing was a sixth of a WAV clip's cost
            fs, path, size = None, uri, os.stat(uri).st_size
        if size is not None and size > MAX_INPUT_BYTES:
            raise AudioDecodeError(uri, f"file is {size / 1024**3:.1f} GiB, over the {MAX_INPUT_BYTES // 1024**3} GiB limit",
                                   "too_large")
        if fs is None or is_local(fs):  # the decoder opens the file itself: no fsspec buffering or Python I/O callbacks
            os.close(os.open(path, os.O_RDONLY))  # unreadable -> PermissionError, a read error like any fs's
            samples, sr = decode_audio(path, SAMPLE_RATE, name=uri)
        else:
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


def decode_batch(batch: dict[str, Any], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """`{"audio_uri": (B,)}` -> a table: audio_uri, waveform, num_samples, sample_rate, duration_s, error, error_kind.

    The waveforms are one contiguous float32 buffer with offsets (an Arrow large_list column: int64
    offsets, since a block may hold more than 2**31 samples, 37 h), which Ray
    moves through the object store and hands to the model actors as is: the actor reads each waveform as
    a zero-copy view (`waveforms(table)`), where a column of numpy arrays would be converted to Ray's
    variable-shaped tensor type, concatenated and converted back on the way."""
    uris = [str(u) for u in batch["audio_uri"]]
    waves, rates, errors, kinds = [], [], [], []
    for uri in uris:
        wave, sr, err, kind = decode_one(uri, storage_options)
        waves.append(wave)
        rates.append(sr if sr is not None else -1)
        errors.append(err)
        kinds.append(kind)
    num_samples = np.array([len(w) for w in waves], dtype=np.int64)
    offsets = np.zeros(len(waves) + 1, dtype=np.int64)
    np.cumsum(num_samples, out=offsets[1:])
    values = np.concatenate(waves) if waves else np.zeros(0, np.float32)
    return pa.table({
        "audio_uri": pa.array(uris, pa.string()),
        "waveform": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),  # 16 kHz; [] on error
        "num_samples": pa.array(num_samples),
        "sample_rate": pa.array(rates, pa.int32()),  # original rate in Hz; -1 on error
        "duration_s": pa.array(np.where(num_samples > 0, num_samples / SAMPLE_RATE, np.nan)),
        "error": pa.array(errors, pa.string()),
        "error_kind": pa.array(kinds, pa.string()),  # read, empty, decode, truncated, no_audio, ... (schema.py)
    })


def waveforms(table: pa.Table) -> list[np.ndarray]:
    """The `waveform` column of a decode_batch table (or of several, concatenated) as read-only float32
    views of its buffers, one (N_i,) array per row; nothing is copied."""
    out = []
    for chunk in table.column("waveform").chunks:
        offsets = chunk.offsets.to_numpy()  # absolute positions in chunk.values, also for a sliced chunk
        values = chunk.values.to_numpy(zero_copy_only=True)
        out += [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return out
