"""Training data: (audio, text) pairs from manifests on any fsspec URI, decoded by the same code as
transcription (pipeline.decode), grouped into duration-bucketed batches."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .batching import plan_batches
from .decode import decode_one
from .sources import InputError, read_manifest_table


@dataclass(frozen=True)
class Utterance:
    audio_uri: str
    text: str
    duration_s: float | None


def read_training_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> list[Utterance]:
    """Rows with `audio_uri` and `text` (and optional `duration_s`); rows without text are refused."""
    table = read_manifest_table(uri, storage_options)
    if "text" not in table.column_names:
        raise InputError(f"manifest {uri} has no 'text' column (columns: {table.column_names})")
    durations = table.column("duration_s").to_pylist() if "duration_s" in table.column_names else [None] * table.num_rows
    rows = []
    for i, (a, t, d) in enumerate(zip(table.column("audio_uri").to_pylist(), table.column("text").to_pylist(), durations)):
        if not t or not str(t).strip():
            raise InputError(f"manifest {uri} row {i}: empty text")
        rows.append(Utterance(a, str(t), None if d is None else float(d)))
    return rows


class AudioCache:
    """Decoded 16 kHz waveforms by URI (a demo-sized corpus fits in memory; decode once per worker)."""

    def __init__(self, storage_options: dict[str, Any] | None = None):
        self.storage_options = storage_options or {}
        self._cache: dict[str, np.ndarray] = {}

    def get(self, uri: str) -> np.ndarray:
        if uri not in self._cache:
            wav, _, err, _ = decode_one(uri, self.storage_options)
            if err:
                raise InputError(f"{uri}: {err}")
            self._cache[uri] = wav
        return self._cache[uri]


def duration_batches(utts: list[Utterance], cache: AudioCache, batch_seconds: float, seed: int,
                     rank: int = 0, world: int = 1) -> list[list[int]]:
    """Duration-bucketed batches (padded seconds <= batch_seconds), shuffled by `seed`, this rank's share.

    Every rank gets the same number of batches (DDP needs equal step counts): the tail is dropped.
    """
    durations = [u.duration_s if u.duration_s is not None else len(cache.get(u.audio_uri)) / 16000 for u in utts]
    batches = plan_batches(durations, batch_seconds)
    random.Random(seed).shuffle(batches)
    per_rank = len(batches) // world
    return batches[rank * per_rank : (rank + 1) * per_rank]


def collate(utts: list[Utterance], idx: list[int], cache: AudioCache, tokenizer) -> dict[str, torch.Tensor]:
    """Padded waveforms (B, N), lengths (B,), targets (B, U) padded with blank, target lengths (B,)."""
    wavs = [cache.get(utts[i].audio_uri) for i in idx]
    ids = [tokenizer.encode(utts[i].text) for i in idx]
    lengths = torch.tensor([len(w) for w in wavs])
    audio = torch.zeros(len(idx), int(lengths.max()))
    for r, w in enumerate(wavs):
        audio[r, : len(w)] = torch.from_numpy(w)
    t_len = torch.tensor([len(x) for x in ids])
    targets = torch.full((len(idx), max(1, int(t_len.max()))), tokenizer.vocab_size, dtype=torch.long)
    for r, x in enumerate(ids):
        targets[r, : len(x)] = torch.tensor(x, dtype=torch.long)
    return {"audio": audio, "lengths": lengths, "targets": targets, "target_lengths": t_len}


def iterate(utts, batches, cache, tokenizer) -> Iterator[dict[str, torch.Tensor]]:
    for idx in batches:
        yield collate(utts, idx, cache, tokenizer)
