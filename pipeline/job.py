"""The transcription job: list -> skip what is written -> decode (CPU tasks) -> Transcriber actors
-> commit Parquet (CPU tasks), streamed by Ray Data; progress and a summary on the driver."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from model.confidence import DEFAULT_CONFIDENCE, ConfidenceConfig
from model.checkpoint import checkpoint_bytes
from model.attention import QUERY_BLOCK
from model.checkpoint import inspect as inspect_checkpoint
from model.config import DECODING_STRATEGIES, ModelConfig
from model.longform import DEFAULT_CHUNK_SECONDS

from .batching import DEFAULT_BATCH_SECONDS
from .decode import decode_batch
from .progress import Progress
from .sink import DEFAULT_ROWS_PER_FILE, SUMMARY_FILE, check_writable, commit_batch, compact, retryable, row_index, sweep_tmp
from .sources import DEFAULT_EXTENSIONS, filesystem, list_inputs
from .transcriber import PRECISIONS, Transcriber

DECODE_CPUS = 1.0  # per decode task (where decoding runs in tasks of its own: GPU actors, multi-thread CPU actors)
COMMIT_CPUS = 0.25  # per commit task
# What a CPU actor holds besides its copy of the weights (cpu_actor_bytes), measured with
# tests/perf/bench_actor_memory.py (Parakeet 0.6B's shape, fp32, one thread, tcmalloc): the worker with Python,
# torch, pyarrow, Ray and the pipeline loaded, 357 MB; one model call's activations, 0.97 / 2.2 / 4.5 GB for 120 s of
# 10 s clips / one 300 s chunk / 600 s of 10 s clips (7.4 MB per padded second, most of it the subsampling convs'
# 256 channels; parakeet-tdt-1.1b has the same front end and width); a window's waveforms, 64 KB per second.
# A small model's convolutions need a few percent of that, but one long chunk's self-attention does not shrink with
# the model: its score, softmax and relative-position tensors grow with heads x frames^2 (the tiny preset, 4 heads,
# peaked 944 MB above its loaded size for one 300 s chunk: 17 bytes per head per frame^2, 8x-subsampled frames).
CPU_ACTOR_BASE_BYTES = 512 * 1024**2
CPU_ACTIVATION_BYTES_PER_S = 8 * 1024**2  # per padded second of one model call, models >= SMALL_MODEL_BYTES
SMALL_MODEL_ACTIVATION_BYTES_PER_S = 1 * 1024**2
# One call's self-attention, per head, query and key it sees (fp32): the tiny preset (4 heads) peaked 938 MB above the
# process with its window loaded for one 300 s chunk (3,750 frames, 16.7 bytes); 20 leaves the allocator some slack.
ATTENTION_BYTES_PER_SCORE = 20
PARAKEET_HEADS, ENCODER_FRAMES_PER_S = 8, 12.5  # when the model's config is not known: 8 heads, 10 ms x 8 frames
WAVEFORM_BYTES_PER_S = 16_000 * 4
# Windows queued on one CPU actor at a time. With Ray's default of 2, the first actor to finish loading takes two
# windows while the others still load; where that is all the input, Ray Data then stops the actors still loading
# ("consumed all inputs") and one actor works through both: Parakeet 0.6B's shape, 691 clips in two windows on two
# single-thread actors, ran its windows one after the other, 524 s and then 330 s. A CPU window is seconds (the demo model) to
# many minutes (Parakeet) of work on a listing block, so the queued second window buys nothing, and it also leaves
# the last windows queued behind a busy actor while another idles.
CPU_TASKS_IN_FLIGHT_PER_ACTOR = 1
UNKNOWN_CHECKPOINT_BYTES = 4.5 * 1024**3  # weights assumed when the checkpoint's size cannot be read (1.1b, fp32)
SMALL_MODEL_BYTES = 100 * 1024**2
# Padded audio per model call on CPU, any model: a small model's activations stay in the cache (the demo model is
# 15-30 % slower at 800 s), and Parakeet 0.6B's need 0.97 GB at 120 s against 4.5 GB at 600 s for a 4 % gain
# (RTFx 6.5 against 6.8 at 480 s, one thread): memory is what bounds how many actors a CPU node runs.
CPU_BATCH_SECONDS = 120.0
MIN_AUDIO_PER_ACTOR_S = 1800.0  # a job starts another actor only for at least this much more audio
DECODE_MEMORY_BYTES = 512 * 1024**2  # per decode task: the worker (numpy, libsndfile, soxr, PyAV) plus its audio
# Decode tasks beside GPU actors: enough to feed them, from a decode rate measured on the driver over a few of the
# inputs (measure_decode_rate) and the rate a GPU actor is assumed to take: Parakeet TDT 0.6B's model card gives
# RTFx 3,380 on the Open ASR leaderboard (A100, batch 128), about twice that on an H100, smaller models more. Too
# many decoders only decode ahead until Ray Data's backpressure stops them; too few starve the GPU.
GPU_ACTOR_AUDIO_S_PER_S = 7000.0
DECODERS_PER_GPU_ACTOR = 4  # where no input could be decoded to measure the rate
DECODE_PROBE_FILES, DECODE_PROBE_S = 8, 3.0  # the driver decodes at most this many of the sampled inputs, this long
DECODE_PROBE_MAX_FILE_S = 600.0  # and only inputs at most this long (a 10 h file would be 2.3 GB on the driver)
MAX_BLOCK_ROWS = 32  # inputs per listing block: bounds decode-task size, keeps block count modest
# Sizing from the inputs' durations (median of a sample of headers), measured on this 2-core box with the demo
# model and 400 clips of 4-20 s (tests/perf/bench_pipeline.py): window 32 -> 128 -> 512 inputs took the job from
# 26.9 to 20.6 to 18.1 s, decode batches of 4 -> 32 inputs from 26.9 to 24.4 s, 2 torch threads beat 1 (20.6 / 23.2 s).
WINDOW_BATCHES = 8  # an actor call holds about this many --batch-seconds of audio: sorted over, padding stays low
MAX_WINDOW_ROWS = 1024
# Audio per decode task (~100 MB of 16 kHz float32). Each Ray task costs CPU on the driver, raylet and
# worker besides the decoding; on 2 cores, next to the CPU model actor, 6,000 clips of 3 s went from 860
# audio-s/s in steady state with 64-clip tasks to 1,040 with 256 and 1,100 with 512 (1,024: no better).
DECODE_TASK_SECONDS = 1600.0
MAX_DECODE_ROWS = 512
DEFAULT_WINDOW_ROWS, DEFAULT_DECODE_ROWS = 32, 4  # when no input's duration can be read from its header
DURATION_SAMPLE = 32  # headers read to estimate the typical duration


@dataclass(frozen=True)
class TranscribeConfig:
    """Everything one `parakeet-ray transcribe` run needs. None means "choose from the cluster"."""

    input_uri: str
    output_uri: str
    model_uri: str
    actors: int | None = None  # Transcriber actors; default: one per GPU, or per core of CPU nodes (cpu_actors_per_node)
    gpus_per_actor: float | None = None  # default: 1 if the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0  # Ray CPUs each actor reserves
    threads_per_actor: int | None = None  # torch threads of a CPU actor; None: its node's cores / CPU actors there
    device: str = "auto"  # auto: cuda when Ray assigned a GPU, else cpu
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or fp32 / bf16 / fp16
    decoding: str | None = None  # greedy_batch / greedy; None: the checkpoint's decoding strategy
    confidence: ConfidenceConfig | None = DEFAULT_CONFIDENCE  # None: no confidence scores
    batch_seconds: float | None = None  # padded audio seconds per model call; None: see batch_seconds_for
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS  # longer inputs are chunked and stitched
    window_rows: int | None = None  # inputs per actor call (sorted, batched inside); None: WINDOW_BATCHES batches' worth
    decode_rows: int | None = None  # inputs per decode task; None: about DECODE_TASK_SECONDS of audio
    rows_per_file: int = DEFAULT_ROWS_PER_FILE  # rows per committed Parquet file
    decode_tasks: int | None = None  # concurrent decode tasks, 0: decode inside the model actors; default: decode_concurrency()
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    limit: int | None = None  # transcribe at most this many new inputs this run
    retry_errors: bool = False  # transcribe again the inputs whose rows are retryable errors (read, oom)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for INPUT and OUTPUT
    progress: bool = True

    def __post_init__(self):
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.decoding is not None and self.decoding not in DECODING_STRATEGIES:
            raise ValueError(f"decoding must be one of {DECODING_STRATEGIES}, got {self.decoding!r}")
        for name in ("batch_seconds", "chunk_seconds", "cpus_per_actor"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("window_rows", "decode_rows", "rows_per_file", "threads_per_actor"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_tasks is not None and self.decode_tasks < 0:
            raise ValueError(f"decode_tasks must be >= 0 (0: decode inside the model actors), got {self.decode_tasks}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


def pending_inputs(cfg: TranscribeConfig, index: pa.Table | None = None) -> tuple[pa.Array, int]:
    """(inputs still to transcribe, number of this INPUT's inputs skipped because OUTPUT already holds them).
    `index`: OUTPUT's sink.row_index, when the caller has read it already."""
    listed = list_inputs(cfg.input_uri, cfg.extensions, cfg.storage_options or None, exclude=cfg.output_uri)
    inputs = pa.array(listed, pa.string())
    if index is None:
        index = row_index(cfg.output_uri, cfg.storage_options or None)
    done = index.column("audio_uri")
    if cfg.retry_errors:  # their rows are replaced once the new ones are committed (sink.compact)
        done = done.filter(pc.invert(retryable(index)))
    skipped = 0
    if len(done):
        already = pc.is_in(inputs, value_set=done)
        skipped = int(pc.sum(already.cast(pa.int64())).as_py() or 0)
        inputs = inputs.filter(pc.invert(already))
    if cfg.limit is not None:
        inputs = inputs[: cfg.limit]
    return inputs, skipped


@dataclass(frozen=True)
class NodeShape:
    """The smallest node that can run CPU work in the connected Ray cluster, and how many such nodes there are."""

    cores: int  # real cores: torch threads to share among the actors placed there
    cpus: float  # Ray's logical CPUs: what actors, decode and commit tasks reserve
    memory: float  # Ray's memory resource, bytes
    nodes: int


def node_shape() -> NodeShape:
    """The connected cluster's smallest alive node with CPUs (a head started with num-cpus 0 runs no tasks and is
    not counted). A node advertising more logical CPUs than the machine has (the embedded local cluster
    oversubscribes on purpose, so decode and commit tasks can always be scheduled) counts its real cores when it
    is this machine."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not alive:
        return NodeShape(os.cpu_count() or 1, float(os.cpu_count() or 1), 0.0, 1)
    smallest = min(alive, key=lambda n: n["Resources"]["CPU"])
    cpus, memory = float(smallest["Resources"]["CPU"]), float(smallest["Resources"].get("memory", 0.0))
    cores = int(cpus)
    here = ray.util.get_node_ip_address() if ray.is_initialized() else None
    if len(alive) == 1 and alive[0].get("NodeManagerAddress") == here:
        cores = min(cores, os.cpu_count() or cores)
    return NodeShape(max(1, cores), cpus, memory, len(alive))


def cpu_actors_per_node(cfg: TranscribeConfig, shape: NodeShape, checkpoint_bytes: int | None,
                        model_config: ModelConfig | None = None) -> int:
    """Model actors a CPU node runs: one single-thread actor per core, as far as the node's memory holds a copy
    of the model for each with its worker, activations and audio (cpu_actor_bytes) and its logical CPUs leave
    room for the commits (single-thread actors decode their own inputs: decode_concurrency).

    Measured on this 2-core box (tests/perf/bench_job.py, the same files): two single-thread processes get
    through 1,530 audio-s/s of the demo model where one with 2 threads gets 1,310, and RTFx 12.7 against 11.6
    for Parakeet 0.6B's shape: a small intra-op parallel region pays a barrier and wake-ups per operator.
    Fewer actors, more threads each, where memory is short. `model_config`: the checkpoint's (model.inspect), for
    its attention's size; None: Parakeet's."""
    per_actor = cpu_actor_bytes(cfg, checkpoint_bytes, model_config)
    by_memory = int(shape.memory // per_actor) if shape.memory > 0 else shape.cores
    # Decode tasks of their own (--decode-tasks, or multi-thread actors) need a whole CPU beside the actors and the
    # commits: with less, the commits wait for gaps between decode tasks, and below one CPU (fractional
    # --cpus-per-actor) no decode task is ever scheduled and the job waits forever.
    reserved = COMMIT_CPUS + (DECODE_CPUS if decodes_in_tasks(cfg) else 0.0)
    by_cpus = int((shape.cpus - reserved) // cfg.cpus_per_actor)
    return max(1, min(shape.cores, by_memory, by_cpus))


def decodes_in_tasks(cfg: TranscribeConfig) -> bool:
    """Whether CPU actors get their inputs from decode tasks of their own rather than decoding them themselves
    (decode_concurrency's rule, which cpu_actors_per_node also needs before the threads are sized): --decode-tasks
    N > 0, or actors of several threads (--threads-per-actor, or --cpus-per-actor, which sets the threads when
    those are not given)."""
    if cfg.decode_tasks is not None:
        return cfg.decode_tasks > 0
    return (cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor))) > 1


def cpu_actor_bytes(cfg: TranscribeConfig, checkpoint_bytes: int | None, model_config: ModelConfig | None = None) -> float:
    """Memory one CPU actor needs: its copy of the weights (the checkpoint's stored size; unknown:
    UNKNOWN_CHECKPOINT_BYTES), the worker (CPU_ACTOR_BASE_BYTES), the largest model call's activations (a batch of
    --batch-seconds, or one chunk of an input longer than that: --chunk-seconds) and a window's waveforms. A call's
    peak is its convolutions' (per padded second) or, for one long chunk, its self-attention's (attention_bytes),
    whichever is larger: they are not alive at once. Parakeet 0.6B at the defaults (120 s batches, 300 s chunks):
    2.4 + 0.5 + 2.4 + 0.3 = 5.6 GB."""
    weights = checkpoint_bytes or UNKNOWN_CHECKPOINT_BYTES
    batch = cfg.batch_seconds or batch_seconds_for(0.0)
    rate = SMALL_MODEL_ACTIVATION_BYTES_PER_S if weights < SMALL_MODEL_BYTES else CPU_ACTIVATION_BYTES_PER_S
    longest = max(batch, cfg.chunk_seconds)  # padded seconds of the largest call
    attention = attention_bytes(cfg.chunk_seconds, model_config)
    return weights + CPU_ACTOR_BASE_BYTES + max(rate * longest, attention) + window_seconds(batch) * WAVEFORM_BYTES_PER_S


def attention_bytes(seconds: float, model_config: ModelConfig | None = None) -> float:
    """Peak memory of one layer's self-attention over one input of `seconds`: its scores, softmax and
    relative-position terms, ATTENTION_BYTES_PER_SCORE per head, query and key it sees. The frames are the encoder's
    (sample rate / (hop x subsampling factor): 12.5 a second for Parakeet, 25 for a 4x-subsampling model, so 4x
    the memory); with limited context (att_context_size [L, R]) the queries are taken QUERY_BLOCK at a time and
    see at most QUERY_BLOCK + L + R keys (model/attention.py), so memory grows with the frames, not their square.
    `model_config`: the checkpoint's; None: Parakeet's (8 heads, full attention)."""
    if model_config is None:
        heads, frames, context = PARAKEET_HEADS, seconds * ENCODER_FRAMES_PER_S, (-1, -1)
    else:
        enc, feat = model_config.encoder, model_config.features
        heads, context = enc.n_heads, enc.att_context_size
        frames = seconds * feat.sample_rate / (feat.hop_length * enc.subsampling_factor)
    queries, keys = frames, frames
    if context[0] >= 0 and context[1] >= 0:
        queries = min(frames, QUERY_BLOCK)
        keys = min(frames, QUERY_BLOCK + context[0] + context[1])
    return ATTENTION_BYTES_PER_SCORE * heads * queries * keys


def resolve_resources(cfg: TranscribeConfig, cluster: dict[str, float], shape: NodeShape | None = None,
                      checkpoint_bytes: int | None = None, model_config: ModelConfig | None = None) -> tuple[int, float]:
    """(actors, gpus per actor) from the config, `ray.cluster_resources()` and, for CPU actors, the nodes'
    shape (node_shape(); None: one CPU actor), the checkpoint's size and its config (model.inspect)."""
    gpus = cluster.get("GPU", 0.0)
    per_actor = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
    if per_actor > gpus:
        raise ValueError(f"--gpus-per-actor {per_actor:g} but the Ray cluster has {gpus:g} GPU(s)")
    if cfg.actors is not None:
        return cfg.actors, per_actor
    if per_actor:
        return max(1, int(gpus // per_actor)), per_actor
    if shape is None:
        return 1, per_actor
    return shape.nodes * cpu_actors_per_node(cfg, shape, checkpoint_bytes, model_config), per_actor


def batch_seconds_for(gpus_per_actor: float) -> float:
    """Padded audio per model call: DEFAULT_BATCH_SECONDS on GPUs, CPU_BATCH_SECONDS on CPU. Measured on this box,
    one thread: the demo model (8 MB) got through the same 1,024 sorted clips of ~3 s fastest in batches of
    32-128 (~100-400 s) and 15-30 % slower at 256 (~800 s), as its activations fall out of the cache; Parakeet
    0.6B's shape (2.4 GB) runs at RTFx 6.3 / 6.5 / 6.8 at 40 / 120 / 480 s, but a 600 s call holds 4.5 GB of
    activations against 0.97 GB at 120 s (cpu_actor_bytes), which would halve the actors a node's memory holds."""
    return DEFAULT_BATCH_SECONDS if gpus_per_actor else CPU_BATCH_SECONDS


def window_seconds(batch_seconds: float | None) -> float:
    """Audio per actor call when --window-rows is not given: WINDOW_BATCHES batches, of at least
    DEFAULT_BATCH_SECONDS each (sorted over, so padding stays low; short CPU batches do not shrink the window)."""
    return WINDOW_BATCHES * max(batch_seconds or DEFAULT_BATCH_SECONDS, DEFAULT_BATCH_SECONDS)


def worthwhile_actors(inputs: int, duration_s: float | None, window_rows: int) -> int:
    """The most actors a job of `inputs` (typical duration `duration_s`, None: unknown) keeps busy: one per window
    of inputs, and one per MIN_AUDIO_PER_ACTOR_S of audio. An actor starts a worker and loads the model (seconds);
    on a small job the others would only add that, and on 2 cores take it from the actor doing the work."""
    most = max(1, math.ceil(inputs / max(1, window_rows)))
    if duration_s:
        most = min(most, max(1, int(inputs * duration_s // MIN_AUDIO_PER_ACTOR_S)))
    return most


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` that is at most `at_most` (1 at least)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def balanced_window(inputs: int, window_rows: int, decode_rows: int, actors: int) -> int:
    """`window_rows` (a multiple of `decode_rows`) lowered, by whole decode tasks, for the job's windows to be a
    multiple of `actors` and as even as they can be, so no actor works on while the others idle: 3,000 inputs in
    512-row decode tasks on 2 actors run as six windows of 512, not three of 1,024 with one actor taking the third
    alone; 691 inputs in 48-row tasks as windows of 384 and 307, not 480 and 211 (the busiest actor's 480 rows).
    Of the window sizes from `window_rows` down to half of it whose count of windows divides among the actors, the
    one with the least work for the busiest actor (rounds x window, in decode tasks), the larger on a tie (fewer
    calls). Unchanged for one actor, or where no size down to half divides evenly."""
    if actors <= 1:
        return window_rows
    tasks = math.ceil(inputs / decode_rows)
    per_window = window_rows // decode_rows
    best = None
    for m in range(per_window, max(1, per_window // 2) - 1, -1):  # windows at most halved
        windows = math.ceil(tasks / m)
        busiest = windows // actors * m  # decode tasks of the actor with the most work
        if windows % actors == 0 and (best is None or busiest < best[0]):
            best = (busiest, m)
    return best[1] * decode_rows if best else window_rows


def decode_concurrency(cfg: TranscribeConfig, actors: int, gpus_per_actor: float, nodes: int = 1,
                       decode_rate: float | None = None, spare_cpus: float | None = None) -> int:
    """Concurrent decode tasks; 0: each model actor decodes its own inputs, in the same process.

    - GPU actors: gpu_decoders(actors, decode_rate, spare_cpus). A GPU eats audio at thousands of times real time
      and MP3 decodes at ~500x per core, so decoding must run beside the model, on the cluster's other CPUs.
    - Single-thread CPU actors (one per core, the default where memory allows): 0. Ray Data then fuses decoding
      into the actors (one operator, `MapBatches(decode_batch)->MapBatches(Transcriber)`), so the waveforms never
      go through the object store and no decode worker runs. Every core already runs an actor, so a separate
      decoder only takes its core time from them, and its Ray side cost as much CPU as the decoding itself
      (serialising ~100 MB a task into the object store, the actor mapping it back, a worker process and its
      scheduling). On 2 cores with the demo model, 12,000 clips took 40.7 s instead of 43.5-46.4 s.
    - Multi-thread CPU actors (memory allows fewer actors than cores): one task per node. Decoding inside such an
      actor would leave all but one of its threads idle meanwhile."""
    if cfg.decode_tasks is not None:
        return cfg.decode_tasks
    if gpus_per_actor > 0:
        return gpu_decoders(actors, decode_rate, spare_cpus)
    return max(1, min(actors, nodes)) if decodes_in_tasks(cfg) else 0


def gpu_decoders(actors: int, decode_rate: float | None, spare_cpus: float | None = None) -> int:
    """Decode tasks for `actors` GPU actors: GPU_ACTOR_AUDIO_S_PER_S each over `decode_rate` (audio seconds one
    decode task gets through a second, measure_decode_rate; None: DECODERS_PER_GPU_ACTOR each), as far as the
    cluster's `spare_cpus` (its CPUs less the actors' and a commit's) hold them at DECODE_CPUS each; at least one.
    16 kHz WAV (~30,000x a task) needs one per GPU, MP3 (~500x) fourteen."""
    per_actor = DECODERS_PER_GPU_ACTOR if not decode_rate else math.ceil(GPU_ACTOR_AUDIO_S_PER_S / decode_rate)
    wanted = actors * per_actor
    if spare_cpus is not None:
        wanted = min(wanted, int(spare_cpus // DECODE_CPUS))
    return max(1, wanted)


def measure_decode_rate(cfg: TranscribeConfig, sampled: list[tuple[str, float | None]]) -> float | None:
    """Audio seconds a decode task gets through per second of its time, timed on the driver (read, decode, resample,
    as decode_batch does) over up to DECODE_PROBE_FILES of `sampled` (sampled_durations) whose headers give at most
    DECODE_PROBE_MAX_FILE_S, stopping once DECODE_PROBE_S have passed: the driver never decodes a long file whole.
    None if none of them decoded."""
    from model.audio import SAMPLE_RATE

    from .decode import decode_one

    audio_s = spent = 0.0
    for uri in _spread([uri for uri, d in sampled if d and d <= DECODE_PROBE_MAX_FILE_S], DECODE_PROBE_FILES):
        t0 = time.perf_counter()
        try:
            wave, _, error, _ = decode_one(uri, cfg.storage_options or None)
        except Exception as e:  # noqa: BLE001 - a probe only: the decode tasks report this input's fault as its row
            wave, error = None, e
        spent += time.perf_counter() - t0
        if error is None:
            audio_s += len(wave) / SAMPLE_RATE
        if spent >= DECODE_PROBE_S:
            break
    return audio_s / spent if audio_s > 0 and spent > 0 else None


def sampled_durations(cfg: TranscribeConfig, inputs: pa.Array) -> list[tuple[str, float | None]]:
    """Up to DURATION_SAMPLE inputs spread evenly over the list, each with its duration in seconds from its header
    (soundfile, else the container's metadata; nothing is decoded), None where that cannot be read."""
    from model.audio import probe_duration

    out = []
    for uri in _spread(inputs, DURATION_SAMPLE).to_pylist():
        try:
            fs, path = filesystem(uri, cfg.storage_options or None)
            with fs.open(path, "rb") as f:
                d = probe_duration(f)
        except (OSError, ValueError):
            d = None
        out.append((uri, d or None))
    return out


def _spread(items, n: int):
    """Up to `n` of `items` (a list or an Arrow array), evenly spread over them."""
    return items[:: max(1, len(items) // n)][:n]


def typical_duration(sampled: list[tuple[str, float | None]]) -> float | None:
    """Median duration in seconds of the sampled inputs (sampled_durations). None if no header could be read."""
    found = sorted(d for _, d in sampled if d)
    return float(found[len(found) // 2]) if found else None


def size_to_inputs(cfg: TranscribeConfig, duration_s: float | None, actors: int, gpus_per_actor: float,
                   node_cores: int, nodes: int = 1, decode_rate: float | None = None,
                   spare_cpus: float | None = None) -> TranscribeConfig:
    """`cfg` with the automatic sizes filled in (given values are kept):
    - window_rows: WINDOW_BATCHES x batch_seconds (at least DEFAULT_BATCH_SECONDS) of audio per actor call, so
      short clips fill GPU batches and long files stay few (memory: about that much audio per actor);
    - decode_rows: about DECODE_TASK_SECONDS of audio per decode task (one input when files are long);
    - threads_per_actor (CPU actors): the node's cores shared by the actors placed on it;
    - decode_tasks: decode_concurrency (for GPU actors: from `decode_rate`, measure_decode_rate, and the
      cluster's `spare_cpus`);
    - batch_seconds: batch_seconds_for."""
    changes = {}
    # Each stage's batches are whole blocks of the one before (listing block | decode task | window): Ray Data
    # cuts a task's bundle into batch_size pieces, so a window of 750 over 512-row decode blocks became calls of
    # 750, 274, 750, 202 rows instead of 750s.
    decode_rows = cfg.decode_rows
    if decode_rows is None:
        rows = DEFAULT_DECODE_ROWS if not duration_s else round(DECODE_TASK_SECONDS / duration_s)
        rows = max(1, min(MAX_DECODE_ROWS, rows))
        if cfg.window_rows is not None:
            decode_rows = largest_divisor(cfg.window_rows, rows)
        else:  # whole listing blocks (MAX_BLOCK_ROWS) where a task holds several
            decode_rows = rows // MAX_BLOCK_ROWS * MAX_BLOCK_ROWS if rows >= MAX_BLOCK_ROWS else rows
        changes["decode_rows"] = decode_rows
    if cfg.window_rows is None:
        window_s = window_seconds(cfg.batch_seconds)
        rows = DEFAULT_WINDOW_ROWS if not duration_s else round(window_s / duration_s)
        rows = max(1, min(MAX_WINDOW_ROWS, rows))
        changes["window_rows"] = decode_rows * max(1, rows // decode_rows)  # whole decode tasks
    if cfg.threads_per_actor is None:
        per_node = max(1, -(-actors // max(1, nodes)))  # ceil
        changes["threads_per_actor"] = 1 if gpus_per_actor else max(1, node_cores // per_node)
    if cfg.decode_tasks is None:
        threads = changes.get("threads_per_actor", cfg.threads_per_actor)
        changes["decode_tasks"] = decode_concurrency(dataclasses.replace(cfg, threads_per_actor=threads), actors,
                                                     gpus_per_actor, nodes, decode_rate, spare_cpus)
    if cfg.batch_seconds is None:
        changes["batch_seconds"] = batch_seconds_for(gpus_per_actor)
    return dataclasses.replace(cfg, **changes)


def describe_plan(cfg: TranscribeConfig, actors: int, gpus_per_actor: float, decode_rate: float | None = None) -> str:
    """One line: how the job will use the cluster (`decode_rate`: what measure_decode_rate found, if it ran)."""
    device = f"{gpus_per_actor:g} GPU" if gpus_per_actor else f"{cfg.threads_per_actor or 1} CPU thread(s)"
    decoders = decode_concurrency(cfg, actors, gpus_per_actor)
    decoding = f"{decoders} decode task(s)" if decoders else "decoding inside the model actors"
    if decode_rate:
        decoding += (f" (a task decodes {decode_rate:,.0f}x real time, measured on the driver; a GPU actor is "
                     f"assumed to take {GPU_ACTOR_AUDIO_S_PER_S:,.0f}x)")
    return (f"plan: {actors} model actor(s) x {device}, {decoding}, "
            f"batches of <= {cfg.batch_seconds or DEFAULT_BATCH_SECONDS:g} s padded audio, up to {cfg.window_rows} inputs per actor call, "
            f"chunks of <= {cfg.chunk_seconds:g} s")


def build_dataset(cfg: TranscribeConfig, inputs: pa.Array, actors: int, gpus_per_actor: float, transcriber: type = Transcriber):
    """The Ray Dataset of transcript rows (schema columns + actor_id/gpu_ids), not yet committed.
    `transcriber`: the model stage's class (Transcriber; tests pass their own to inject faults)."""
    decoders = decode_concurrency(cfg, actors, gpus_per_actor)
    return transcribed(cfg, decoded(cfg, inputs, decoders, gpus_per_actor, actors), actors, gpus_per_actor, transcriber)


def decoded(cfg: TranscribeConfig, inputs: pa.Array, decoders: int | None = None, gpus_per_actor: float = 0.0,
            actors: int | None = None):
    """Audio URIs -> decoded 16 kHz waveforms (or error rows): in `decoders` CPU tasks, or (0) inside the `actors`
    model actors: the same resources as the model stage, so Ray Data fuses the two (see decode_concurrency). The
    task pool's size is the actor pool's, which fusion requires, and which bounds the decoding if it did not fuse."""
    import ray

    decode_rows = cfg.decode_rows or DEFAULT_DECODE_ROWS
    # whole blocks per decode task (see size_to_inputs)
    block_rows = largest_divisor(decode_rows, max(1, min(MAX_BLOCK_ROWS, math.ceil(len(inputs) / 64))))
    blocks = [pa.table({"audio_uri": inputs[i : i + block_rows]}) for i in range(0, len(inputs), block_rows)]
    if decoders == 0:  # the model stage's own resources: Ray Data fuses decoding into the actors
        resources = dict(model_stage_resources(cfg, gpus_per_actor),
                         compute=ray.data.TaskPoolStrategy(size=actors) if actors else None)
    else:
        # Reserving memory for decoded audio also keeps Ray Data from fusing decoding into the model
        # actors (it fuses stages whose resources are equal): decoding overlaps inference instead.
        resources = dict(num_cpus=DECODE_CPUS, compute=ray.data.TaskPoolStrategy(size=decoders), memory=DECODE_MEMORY_BYTES)
    return ray.data.from_arrow(blocks).map_batches(
        decode_batch, batch_size=decode_rows, batch_format="numpy",
        fn_kwargs={"storage_options": cfg.storage_options or None}, **resources,
    )


def model_stage_resources(cfg: TranscribeConfig, gpus_per_actor: float) -> dict[str, float]:
    """Ray resources of one Transcriber actor; decoding asks for the same to be fused into it."""
    return {"num_cpus": cfg.cpus_per_actor, "num_gpus": gpus_per_actor}


def transcribed(cfg: TranscribeConfig, ds, actors: int, gpus_per_actor: float, transcriber: type = Transcriber):
    """A pool of `actors` Transcriber actors (each with `gpus_per_actor` GPUs) over decoded rows."""
    import ray

    return ds.map_batches(
        transcriber,
        fn_constructor_kwargs=dict(
            model_uri=_absolute(cfg.model_uri), model_label=cfg.model_uri, device=cfg.device, precision=cfg.precision,
            batch_seconds=cfg.batch_seconds or DEFAULT_BATCH_SECONDS, chunk_seconds=cfg.chunk_seconds, decoding=cfg.decoding,
            confidence=cfg.confidence,
            num_threads=cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor)),
        ),
        # CPU actors take one window at a time (see CPU_TASKS_IN_FLIGHT_PER_ACTOR); GPU actors keep Ray's default (2),
        # which fetches the next window's decoded audio while the GPU works on this one.
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_tasks_in_flight_per_actor=None if gpus_per_actor else CPU_TASKS_IN_FLIGHT_PER_ACTOR),
        # pyarrow: the decoded waveforms reach the actor as the decode tasks' buffers (decode.waveforms)
        batch_size=cfg.window_rows or DEFAULT_WINDOW_ROWS, batch_format="pyarrow", **model_stage_resources(cfg, gpus_per_actor),
    )


def _config_or_none(model_uri: str) -> ModelConfig | None:
    """The checkpoint's config for planning; None where it cannot be read here (the actors' load names the fault)."""
    try:
        return inspect_checkpoint(model_uri)
    except Exception:  # noqa: BLE001 - planning falls back to Parakeet's shape; loading the model reports the cause
        return None


def _absolute(model_uri: str) -> str:
    """A local model path made absolute so actors on any worker (cwd differs) find it."""
    if "://" in model_uri or not os.path.exists(model_uri):
        return model_uri  # fsspec URI or hub id
    return os.path.abspath(model_uri)


@dataclass(frozen=True)
class Plan:
    """What a run will do, computed on the driver before Ray is involved (fails fast on bad INPUT/OUTPUT)."""

    inputs: pa.Array  # audio URIs still to transcribe
    skipped: int  # inputs OUTPUT already holds
    swept: int  # temporaries of a killed run deleted from OUTPUT/_tmp
    started: datetime
    t0: float  # time.monotonic() at the start


def prepare(cfg: TranscribeConfig) -> Plan:
    """Check OUTPUT is writable, sweep leftovers, list INPUT and drop what is already written."""
    started, t0 = datetime.now(timezone.utc), time.monotonic()
    check_writable(cfg.output_uri, cfg.storage_options or None)
    swept = sweep_tmp(cfg.output_uri, cfg.storage_options or None)
    index = row_index(cfg.output_uri, cfg.storage_options or None)  # one read of OUTPUT for both steps
    if compact(cfg.output_uri, cfg.storage_options or None, index):  # finish a retry a killed run left half done
        index = row_index(cfg.output_uri, cfg.storage_options or None)
    inputs, skipped = pending_inputs(cfg, index)
    return Plan(inputs, skipped, swept, started, t0)


def run(cfg: TranscribeConfig, plan: Plan | None = None, transcriber: type = Transcriber, lease=None,
        model_config: ModelConfig | None = None) -> dict[str, Any]:
    """Run the whole job on the connected Ray cluster; returns the summary (also OUTPUT/_summary.json).

    A per-input problem is an error row; anything that fails the model stage itself (a bad model, a
    bug, a CUDA error) raises here after what was already committed stays committed, so a rerun
    after the fix transcribes the rest. `transcriber`: the model stage's class (see build_dataset).
    `lease`: the pipeline.lease.Lease this run holds on OUTPUT; the run stops if another run took it over.
    `model_config`: the checkpoint's config (model.inspect), for sizing CPU actors; None: read here when needed."""
    import ray

    plan = plan or prepare(cfg)
    totals = {"files": 0, "errors": 0, "audio_s": 0.0, "committed_files": 0}
    progress = Progress(len(plan.inputs), enabled=cfg.progress)
    if len(plan.inputs):
        cluster, shape = ray.cluster_resources(), node_shape()
        on_cpu = not (cfg.gpus_per_actor or (cfg.gpus_per_actor is None and cluster.get("GPU", 0) > 0))
        size = None
        if on_cpu and cfg.actors is None:  # for cpu_actors_per_node
            size = checkpoint_bytes(cfg.model_uri)
            model_config = model_config or _config_or_none(cfg.model_uri)
        actors, gpus_per_actor = resolve_resources(cfg, cluster, shape, size, model_config)
        sampled = sampled_durations(cfg, plan.inputs)
        duration = typical_duration(sampled)
        rate = measure_decode_rate(cfg, sampled) if gpus_per_actor and cfg.decode_tasks is None else None

        def sizes(actors: int) -> TranscribeConfig:
            spare = cluster.get("CPU", 0.0) - actors * cfg.cpus_per_actor - COMMIT_CPUS  # for GPU actors' decoders
            return size_to_inputs(cfg, duration, actors, gpus_per_actor, shape.cores, shape.nodes, rate, spare)

        sized = sizes(actors)
        useful = worthwhile_actors(len(plan.inputs), duration, sized.window_rows)
        if cfg.actors is None and actors > useful:
            actors = useful
            sized = sizes(actors)
        if cfg.window_rows is None:
            window = balanced_window(len(plan.inputs), sized.window_rows, sized.decode_rows, actors)
            sized = dataclasses.replace(sized, window_rows=window)
        cfg = sized
        if cfg.progress:
            print(describe_plan(cfg, actors, gpus_per_actor, rate), file=sys.stderr, flush=True)
        ds = build_dataset(cfg, plan.inputs, actors, gpus_per_actor, transcriber).map_batches(
            commit_batch, batch_size=cfg.rows_per_file, batch_format="pyarrow",
            fn_kwargs={"output_uri": cfg.output_uri, "storage_options": cfg.storage_options or None}, num_cpus=COMMIT_CPUS,
        )
        for stats in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in stats.to_pylist():
                totals["files"] += row["rows"]
                totals["errors"] += row["errors"]
                totals["audio_s"] += row["audio_s"]
                totals["committed_files"] += 1
            progress.update(totals["files"], totals["audio_s"], totals["errors"])
            if lease is not None and lease.lost:
                raise RuntimeError(f"lost the lease on {cfg.output_uri} to another run (no heartbeat for "
                                   f"{lease.timeout_s:.0f} s): stopping; what was committed stays")
    progress.close()
    replaced = compact(cfg.output_uri, cfg.storage_options or None) if cfg.retry_errors else 0
    wall = time.monotonic() - plan.t0
    summary = {
        "input": cfg.input_uri, "output": cfg.output_uri, "model": cfg.model_uri,
        "files": totals["files"], "errors": totals["errors"], "skipped_already_done": plan.skipped,
        "output_rows": plan.skipped + totals["files"], "audio_seconds": round(totals["audio_s"], 3),
        "audio_hours": round(totals["audio_s"] / 3600, 6), "wall_time_s": round(wall, 3),
        "audio_seconds_per_second": round(totals["audio_s"] / wall, 3) if wall > 0 else 0.0,
        "committed_files": totals["committed_files"], "swept_temporaries": plan.swept, "replaced_error_rows": replaced,
        "started_at": plan.started.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    write_summary(cfg, summary)
    return summary


def write_summary(cfg: TranscribeConfig, summary: dict[str, Any]) -> None:
    fs, root = filesystem(cfg.output_uri, cfg.storage_options or None)
    with fs.open(root.rstrip("/") + "/" + SUMMARY_FILE, "w") as f:
        json.dump(summary, f, indent=2)


def format_summary(summary: dict[str, Any]) -> str:
    return (
        f"files {summary['files']} ({summary['errors']} errors, {summary['skipped_already_done']} already done), "
        f"audio {summary['audio_hours']:.3f} h, wall {summary['wall_time_s']:.1f} s, "
        f"{summary['audio_seconds_per_second']:.1f} audio-s/s -> {summary['output']}"
    )
