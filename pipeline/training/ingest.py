"""Training ingest on Ray Data: the plan's rows -> decoded, tokenised utterances -> duration-bucketed batches.

    driver (TorchTrainer(datasets={"train": ...})):
        read_parquet(OUTPUT/_plan) -> drop skipped rows -> random_shuffle (metadata only: uri, text)
        -> map_batches(prepare_batch): CPU tasks decode + resample (pipeline.decode) and tokenise
    each worker (ray.train.get_dataset_shard("train")):
        iter_batches(prefetch) -> bucket_batches: fill a buffer of `buffer_batches * batch_seconds` audio
        seconds, sort it by duration, cut batches of padded seconds <= batch_seconds, shuffle them, emit

The decode tasks run wherever Ray has CPUs (CPU-only nodes too) and overlap training: Ray Data streams
them ahead of the workers and `iter_batches(prefetch_batches=...)` keeps decoded rows waiting. Nothing
holds more than a buffer of audio, so a worker's memory does not depend on the corpus size. The shuffle
is global but moves only metadata rows (a few hundred bytes each); waveforms are decoded after it.

A row that cannot be used comes out of prepare_batch with a `reason` and no audio; the worker counts it
and skips it (`SKIP_REASONS` in config.py).
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.audio import SAMPLE_RATE
from pipeline.decode import decode_one
from pipeline.sources import filesystem

from .config import TrainConfig
from .plan import Plan

ROWS_PER_TASK = 32  # utterances one decode task handles (its output block: ~10 MB of audio at 10 s each)


def training_dataset(plan: Plan, cfg: TrainConfig, tokenizer_data: tuple[str, bytes], workers: int = 1):
    """The Ray Dataset every epoch streams: see the module docstring."""
    import pyarrow.fs as pafs
    import ray.data
    from ray.data.expressions import col

    fs, _ = filesystem(plan.shards[0], cfg.storage_options)
    paths = [filesystem(s, cfg.storage_options)[1] for s in plan.shards]
    ds = ray.data.read_parquet(paths, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
                               columns=["uid", "audio_uri", "text", "duration_s", "reason"])
    ds = ds.filter(expr=col("reason").is_null()).drop_columns(["reason"])
    ds = ds.random_shuffle()  # re-drawn every epoch (each epoch re-executes the dataset)
    # small blocks: decode tasks run in parallel and blocks are dealt to the workers evenly; the shuffle
    # alone keeps the plan's few large blocks (one per 20,000-row shard)
    rows = max(1, min(ROWS_PER_TASK, plan.rows // (4 * workers)))  # a small corpus still gives each worker blocks
    ds = ds.repartition(target_num_rows_per_block=rows)
    return ds.map_batches(prepare_batch, batch_size=max(1, rows // 4), batch_format="numpy", num_cpus=cfg.decode_cpus,
                          fn_kwargs={"storage_options": cfg.storage_options, "tokenizer_data": tokenizer_data,
                                     "min_duration": cfg.min_duration, "max_duration": cfg.max_duration})


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_data: tuple[str, bytes]):
    from model.tokenizer import Tokenizer

    return Tokenizer(data=tokenizer_data)


def prepare_batch(batch: dict[str, np.ndarray], storage_options: dict[str, Any], tokenizer_data: tuple[str, bytes],
                  min_duration: float = 0.0, max_duration: float = float("inf")) -> dict[str, np.ndarray]:
    """Decode and tokenise plan rows. Out: uid, audio (float32, 16 kHz; empty when skipped), tokens (int32),
    duration_s (decoded length), reason ('' when usable, else a SKIP_REASONS entry), error (detail, '' if none)."""
    tok = _tokenizer(tokenizer_data)
    unk = tok.unk_id
    audio, tokens, durations, reasons, errors = [], [], [], [], []
    for uri, text in zip(batch["audio_uri"], batch["text"]):
        wave, _, err, _ = decode_one(str(uri), storage_options)
        ids = np.asarray(tok.encode(str(text)), dtype=np.int32)
        seconds = len(wave) / SAMPLE_RATE
        reason = ""
        if err or not len(wave):
            reason, err = "unreadable", err or "no audio"
        elif seconds > max_duration:
            reason = "too_long"
        elif seconds < min_duration:
            reason = "below_min_duration"
        elif not len(ids) or (unk is not None and (ids == unk).any()):
            reason = "unencodable_text"
        if reason:
            wave, ids = _EMPTY_WAVE, _EMPTY_IDS
        audio.append(wave)
        tokens.append(ids)
        durations.append(seconds)
        reasons.append(reason)
        errors.append(err or "")
    return {"uid": np.asarray(batch["uid"], dtype=np.int64), "audio": _objects(audio), "tokens": _objects(tokens),
            "duration_s": np.asarray(durations, dtype=np.float64), "reason": np.asarray(reasons, dtype=object),
            "error": np.asarray(errors, dtype=object)}


_EMPTY_WAVE = np.zeros(0, dtype=np.float32)
_EMPTY_IDS = np.zeros(0, dtype=np.int32)


def _objects(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


@dataclass
class MicroBatch:
    uids: list[int]
    audio: list[np.ndarray]
    tokens: list[np.ndarray]

    @property
    def audio_seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def iter_rows(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, np.ndarray, str]]:
    """Rows (uid, audio, tokens, reason) of Ray Data numpy batches."""
    for b in batches:
        for uid, audio, tokens, reason in zip(b["uid"], b["audio"], b["tokens"], b["reason"]):
            yield int(uid), np.asarray(audio, dtype=np.float32), np.asarray(tokens, dtype=np.int32), str(reason)


def bucket_batches(rows: Iterable[tuple[int, np.ndarray, np.ndarray, str]], batch_seconds: float, buffer_batches: int,
                   rng: random.Random, skip: Container[int] = frozenset(),
                   on_skip: Callable[[int, str], None] = lambda uid, reason: None,
                   frames: Callable[[int], int] | None = None) -> Iterator[MicroBatch]:
    """Duration-bucketed micro-batches from a stream of rows, with bounded memory.

    Rows whose uid is in `skip` (used earlier in this epoch, before a resume) are dropped silently; rows
    with a reason, or whose encoder frames `frames(num_samples)` are fewer than their tokens (T < U,
    reason too_short_for_text), go to `on_skip(uid, reason)`. The others fill a buffer until it holds
    `buffer_batches * batch_seconds` of audio; the buffer is cut by pipeline.batching.plan_batches
    (shortest first, padded seconds <= batch_seconds) and its batches come out in a shuffled order.
    Every usable row comes out exactly once.
    """
    from pipeline.batching import plan_batches

    budget = buffer_batches * batch_seconds
    buf: list[tuple[int, np.ndarray, np.ndarray]] = []
    held = 0.0

    def drain():
        batches = plan_batches([len(r[1]) / SAMPLE_RATE for r in buf], batch_seconds)
        rng.shuffle(batches)
        for idx in batches:
            yield MicroBatch([buf[i][0] for i in idx], [buf[i][1] for i in idx], [buf[i][2] for i in idx])

    for uid, audio, tokens, reason in rows:
        if uid in skip:
            continue
        if not reason and frames is not None and frames(len(audio)) < len(tokens):
            reason = "too_short_for_text"
        if reason:
            on_skip(uid, reason)
            continue
        buf.append((uid, audio, tokens))
        held += len(audio) / SAMPLE_RATE
        if held >= budget:
            yield from drain()
            buf, held = [], 0.0
    if buf:
        yield from drain()


def collate(mb: MicroBatch, blank_id: int, pin: bool = False) -> dict[str, torch.Tensor]:
    """Padded waveforms (B, N), lengths (B,), targets (B, U) padded with blank, target lengths (B,)."""
    lengths = torch.tensor([len(a) for a in mb.audio])
    audio = torch.zeros(len(mb.audio), int(lengths.max()))
    for r, a in enumerate(mb.audio):
        audio[r, : len(a)] = torch.from_numpy(a)
    t_len = torch.tensor([len(t) for t in mb.tokens])
    targets = torch.full((len(mb.tokens), max(1, int(t_len.max()))), blank_id, dtype=torch.long)
    for r, t in enumerate(mb.tokens):
        targets[r, : len(t)] = torch.from_numpy(t.astype(np.int64))
    out = {"audio": audio, "lengths": lengths, "targets": targets, "target_lengths": t_len}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out
