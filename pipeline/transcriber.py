"""The model stage: a callable class Ray Data runs as a pool of actors (one GPU each when present).

The model is loaded once per actor in `__init__`. `__call__` takes the decode stage's table (or a
dict of its columns) and returns a `pyarrow.Table` with the output schema plus the debug columns
`actor_id`/`gpu_ids`; it needs no Ray, so it is unit-tested directly.

Failures are honest: a per-input problem is an error row (the decode stage's, or out of memory on
that input alone after its batch was split: only OOM splits a batch); anything else (a model or
tokenizer problem, a CUDA error other than OOM, a bug) propagates and fails the job, so nothing is
written for those inputs and a rerun after the fix transcribes them.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import model
from model.confidence import DEFAULT_CONFIDENCE
from model.longform import DEFAULT_CHUNK_SECONDS, frame_samples, split_points, stitch
from model.transcribe import decoding_rule

from .batching import DEFAULT_BATCH_SECONDS, plan_batches
from .decode import waveforms
from .schema import TRANSCRIPT_SCHEMA, error_row, transcript_row

log = logging.getLogger(__name__)

def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM (torch.OutOfMemoryError) or a CPU allocator failure; nothing else splits a batch."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())


def resolve_device(requested: str, gpu_ids: list) -> str:
    """'auto' -> 'cuda' when Ray assigned this actor a GPU, else 'cpu'. A GPU assignment without
    a usable CUDA runtime is an error (a silent CPU fallback would run 50x slower unnoticed)."""
    if requested != "auto":
        return requested
    if not gpu_ids:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Ray assigned GPU(s) {gpu_ids} to this actor but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU, so cuda:0 is ours


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: str) -> torch.dtype:
    """'auto' -> bf16 on CUDA (fp16 where the GPU has no bf16), fp32 on CPU (NeMo-equal outputs).
    bf16 on CPU is opt-in: about 2x faster on CPUs with AVX512-BF16/AMX, transcripts may differ slightly."""
    if requested == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r}; expected auto or one of {sorted(PRECISIONS)}")
    if requested == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return PRECISIONS[requested]


MODEL_THREAD_NAME = "parakeet-model"  # the model thread's name in the OS (top -H, perf, /proc/PID/task/*/comm)
PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` (at most 15 bytes) in the OS too, where Python's thread names do not reach,
    so a profiler, `top -H` or tests/perf/bench_job.py tells the model's thread from Ray's and the decoder's.
    Linux only; elsewhere, or where prctl is missing, nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except ImportError:
        return []


class Transcriber:
    """Batch of decoded inputs -> transcript rows.

    model_uri: what `model.load` accepts (folder, .nemo, fsspec URI, hub id); it is also written
    to each row's `model` column. batch_seconds: padded audio seconds per model call.
    chunk_seconds: inputs longer than this are split at quiet points and stitched (model/longform.py).
    decoding: "greedy_batch" / "greedy" overrides the checkpoint's decoding strategy (None keeps it).
    confidence: how tokens, words and utterances are scored (model.ConfidenceConfig); None: not at all.
    """

    def __init__(
        self,
        model_uri: str,
        device: str = "auto",
        precision: str = "auto",
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        num_threads: int | None = None,
        model_label: str | None = None,
        decoding: str | None = None,
        confidence: model.ConfidenceConfig | None = DEFAULT_CONFIDENCE,
    ):
        # All of this object's torch work runs on one thread of its own. OpenMP (torch's CPU threads) keeps
        # a team of worker threads per calling thread, and libgomp stops spinning (its workers sleep between
        # parallel regions and every op pays a wake-up) once it manages more threads than the machine has
        # CPUs. Ray Data builds an actor on its main thread and calls it from another, which made two teams:
        # a 1,024-clip window of the demo model took 2.7 s instead of 2.35 s on 2 cores.
        self._torch_thread = ThreadPoolExecutor(1, thread_name_prefix="transcriber")
        self._torch_thread.submit(self._setup, model_uri, device, precision, batch_seconds, chunk_seconds, num_threads,
                                  model_label, decoding, confidence).result()

    def _setup(self, model_uri, device, precision, batch_seconds, chunk_seconds, num_threads, model_label, decoding,
               confidence) -> None:
        name_os_thread(MODEL_THREAD_NAME)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.gpu_ids = _ray_gpu_ids()
        self.device = resolve_device(device, self.gpu_ids)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.load(model_uri, device=self.device, dtype=self.precision)
        self.decoding = decoding_rule(self.model, decoding)
        self.confidence = confidence
        self.sample_rate = self.model.config.features.sample_rate
        self.frame = frame_samples(self.model.config)
        self.model_label = model_label or model_uri
        self.batch_seconds = float(batch_seconds)
        self.chunk_seconds = float(chunk_seconds)
        self.actor_id = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        return self._torch_thread.submit(self._call, batch).result()

    def _call(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        now = datetime.now(timezone.utc)
        if isinstance(batch, pa.Table):  # what the job passes: decode_batch's tables, waveforms read in place
            uris, errors, rates = (batch.column(c).to_pylist() for c in ("audio_uri", "error", "sample_rate"))
            kinds = batch.column("error_kind").to_pylist() if "error_kind" in batch.column_names else [None] * len(uris)
            all_waves = waveforms(batch)
        else:  # a dict of columns (numpy or lists), e.g. hand-made in a notebook
            uris, errors, rates = [str(u) for u in batch["audio_uri"]], list(batch["error"]), list(batch["sample_rate"])
            kinds = list(batch["error_kind"]) if "error_kind" in batch else [None] * len(uris)
            all_waves = batch["waveform"]
        rows: list[dict | None] = [None] * len(uris)
        todo = []  # indices of decodable inputs
        for i, uri in enumerate(uris):
            if errors[i] is not None and str(errors[i]) not in ("", "None", "nan"):
                rows[i] = error_row(uri, str(errors[i]), self.model_label, now, kind=str(kinds[i] or "decode"))
            else:
                todo.append(i)
        waves = {i: np.asarray(all_waves[i], dtype=np.float32) for i in todo}
        for i, result in self._transcribe(waves).items():
            rate = int(rates[i])
            if isinstance(result, BaseException):  # out of memory on this input alone
                rows[i] = error_row(uris[i], f"OutOfMemory: {type(result).__name__}: {result}", self.model_label, now,
                                    duration_s=len(waves[i]) / self.sample_rate, sample_rate=rate, kind="oom")
            else:
                rows[i] = transcript_row(uris[i], result, rate, self.model_label, now)
        table = pa.Table.from_pylist(rows, schema=TRANSCRIPT_SCHEMA)
        n = table.num_rows
        table = table.append_column("actor_id", pa.array([self.actor_id] * n, pa.string()))
        return table.append_column("gpu_ids", pa.array([",".join(map(str, self.gpu_ids))] * n, pa.string()))

    def _transcribe(self, waves: dict[int, np.ndarray]) -> dict[int, model.Transcript | BaseException]:
        """Transcripts for each input (index -> waveform (N,) at 16 kHz); long ones chunked."""
        sr, frame = self.sample_rate, self.frame
        pieces: list[tuple[int, int, int]] = []  # (input index, start sample, end sample)
        for i, w in waves.items():
            pieces += [(i, s, e) for s, e in split_points(w, self.chunk_seconds, sr, frame)]
        plan = plan_batches([(e - s) / sr for _, s, e in pieces], self.batch_seconds)
        out: dict[int, Any] = {}
        for batch in plan:
            chunk = [waves[pieces[k][0]][pieces[k][1] : pieces[k][2]] for k in batch]
            for k, result in zip(batch, self._run(chunk)):
                out[k] = result
        by_input: dict[int, list[int]] = {}
        for k, (i, _, _) in enumerate(pieces):
            by_input.setdefault(i, []).append(k)
        results: dict[int, model.Transcript | BaseException] = {}
        for i, w in waves.items():
            mine = by_input[i]
            failed = next((out[k] for k in mine if isinstance(out[k], BaseException)), None)
            if failed is not None:
                results[i] = failed
            elif len(mine) == 1:
                results[i] = out[mine[0]]
            else:
                results[i] = stitch([out[k] for k in mine], [pieces[k][1] for k in mine], len(w) / sr, sr, frame,
                                    self.confidence.aggregation if self.confidence is not None else None)
        return results

    def _run(self, arrays: list[np.ndarray]) -> list[model.Transcript | BaseException]:
        """One padded model call. Out of memory: split the batch in halves down to single inputs, so only
        an input too large on its own becomes an (oom) error row. Any other exception propagates."""
        try:
            return self._forward(arrays)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(arrays) == 1:
                return [e]
            log.warning("batch of %d ran out of memory (%s); splitting it", len(arrays), e)
            half = len(arrays) // 2
            return self._run(arrays[:half]) + self._run(arrays[half:])

    def _forward(self, arrays: list[np.ndarray]) -> list[model.Transcript]:
        lengths = torch.tensor([len(a) for a in arrays])  # (B,) samples
        # On a GPU the padded batch is built in pinned host memory, so its copy to the device is a
        # non-blocking DMA (ParakeetTDT.encode) rather than a staged, synchronous one.
        pinned = self.device.startswith("cuda")
        waveforms = torch.zeros(len(arrays), int(lengths.max()), pin_memory=pinned)  # (B, N)
        for row, a in enumerate(arrays):
            waveforms[row, : len(a)].numpy()[:] = a  # via numpy: Arrow-backed arrays are read-only
        return self.model.transcribe_waveforms(waveforms, lengths, decoding=self.decoding, confidence=self.confidence)
