"""`parakeet-ray transcribe INPUT OUTPUT`: batch transcription to Parquet on Ray (see docs/pipeline.md)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

# The bundled demo model (trained by the project, a few MB); used when --model is not given.
DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "model" / "pretrained" / "parakeet-tdt-demo")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name on the Hugging Face hub


class UsageError(Exception):
    """A bad argument, missing INPUT/model or unwritable OUTPUT: printed without a traceback, exit 2."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe a folder/bucket prefix or manifest of audio into Parquet transcripts",
        description="Transcribe every audio file under INPUT (a folder, an fsspec URI prefix such as s3://bucket/audio/, "
        "or a Parquet/CSV/JSONL/JSON manifest with an audio_uri column, or NeMo's audio_filepath) into OUTPUT/transcripts/*.parquet. "
        "Rerunning the same command resumes: inputs already in OUTPUT are skipped.",
    )
    p.add_argument("input", metavar="INPUT", help="folder, URI prefix, single file, or manifest (.parquet/.csv/.jsonl)")
    p.add_argument("output", metavar="OUTPUT", help="output folder or URI prefix")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model folder, .nemo file, fsspec URI or Hugging Face hub id (default: the bundled demo model)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto', 'ray://host:10001', or host:port; default: start a local Ray")
    p.add_argument("--actors", type=int, default=None, help="model actors (default: one per GPU; without GPUs one single-thread actor per core as far as memory holds the model, fewer for a small job)")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray CPUs each actor reserves (default: 1)")
    p.add_argument("--threads-per-actor", type=int, default=None,
                   help="torch threads of a CPU actor (default: its node's cores shared by the actors on it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when the actor holds a GPU, else cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="model weights/compute: auto = bf16 on GPU, fp32 on CPU (NeMo-equal); bf16 on CPU is ~2x "
                        "faster on AVX512-BF16/AMX CPUs, transcripts may differ slightly")
    p.add_argument("--decoding", choices=("greedy_batch", "greedy"), default=None,
                   help="greedy TDT rules: greedy_batch = NeMo's label looping (what Parakeet checkpoints ship), "
                        "greedy = NeMo's GreedyTDTInfer; default: the checkpoint's decoding.strategy")
    c = p.add_argument_group("confidence", "per token, word and file scores in [0, 1], as NeMo's decoding.confidence_cfg")
    c.add_argument("--confidence", choices=("entropy", "max_prob", "none"), default="entropy",
                   help="frame measure (NeMo method_cfg.name); none: no scores (default: entropy)")
    c.add_argument("--confidence-entropy-type", choices=("gibbs", "tsallis", "renyi"), default="tsallis")
    c.add_argument("--confidence-alpha", type=float, default=0.33, help="power of the probabilities, > 0 (default 0.33)")
    c.add_argument("--confidence-entropy-norm", choices=("lin", "exp"), default="exp")
    c.add_argument("--confidence-aggregation", choices=("mean", "min", "max", "prod"), default="min",
                   help="tokens -> words -> file (default: min)")
    c.add_argument("--confidence-include-blank", action="store_true",
                   help="score tokens with the blank steps after them (NeMo exclude_blank: false)")
    c.add_argument("--confidence-tdt-duration", action="store_true",
                   help="also score the duration prediction (NeMo tdt_include_duration)")
    p.add_argument("--batch-seconds", type=float, default=None, help="padded audio seconds per model call (default: 600 on GPUs, 120 on CPU)")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="inputs longer than this are split at pauses and stitched (default: 300)")
    p.add_argument("--extensions", default=None, help="comma-separated file extensions to pick up under INPUT (default: common audio)")
    p.add_argument("--limit", type=int, default=None, help="transcribe at most N new inputs this run")
    p.add_argument("--retry-errors", action="store_true",
                   help="transcribe again the inputs whose rows are retryable errors (error_kind read or oom) and "
                        "replace those rows (each input keeps exactly one row)")
    p.add_argument("--window-rows", type=int, default=None,
                   help="inputs handed to an actor per call, sorted and batched by duration inside "
                        "(default: 8 x --batch-seconds, at least 4,800 s, of audio, at most 1,024 inputs, from the inputs' header durations)")
    p.add_argument("--decode-tasks", type=int, default=None,
                   help="concurrent decode tasks; 0: each model actor decodes its own inputs (default: for GPU actors, "
                        "enough to feed each 7,000x real time at the decode rate measured on a few inputs, within "
                        "the cluster's spare CPUs; on CPU nodes 0 where actors have one thread each, else 1 per node)")
    p.add_argument("--rows-per-file", type=int, default=None, help="rows per output Parquet file (default: 256)")
    p.add_argument("--storage-options", default=None, help='JSON of fsspec options, e.g. \'{"anon": false, "profile": "x"}\'')
    p.add_argument("--lease-timeout", type=float, default=600.0,
                   help="seconds without a heartbeat after which another run's lease on OUTPUT is taken over (default 600)")
    p.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    p.set_defaults(func=run_command)


def build_config(args: argparse.Namespace):
    """argparse namespace -> pipeline.job.TranscribeConfig, validating early with clear messages."""
    from pipeline.job import TranscribeConfig
    from pipeline.sources import normalise_extensions

    options = {}
    if args.storage_options:
        try:
            options = json.loads(args.storage_options)
        except json.JSONDecodeError as e:
            raise UsageError(f"--storage-options is not valid JSON: {e}") from e
        if not isinstance(options, dict):
            raise UsageError("--storage-options must be a JSON object")
    model_uri = args.model
    if "://" not in model_uri and not os.path.exists(model_uri) and not HUB_ID.fullmatch(model_uri):
        hint = " (the bundled demo model is not built in this checkout; pass --model)" if model_uri == DEFAULT_MODEL else ""
        raise UsageError(f"model {model_uri} does not exist{hint}")
    extra = {}
    for name in ("batch_seconds", "chunk_seconds", "rows_per_file", "window_rows", "decode_tasks", "threads_per_actor"):
        if getattr(args, name) is not None:
            extra[name] = getattr(args, name)
    if args.extensions:
        extra["extensions"] = normalise_extensions(args.extensions.split(","))
    try:
        return TranscribeConfig(
            input_uri=args.input, output_uri=args.output, model_uri=model_uri, actors=args.actors,
            confidence=confidence_config(args),
            gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor, device=args.device,
            precision=args.precision, decoding=args.decoding, retry_errors=args.retry_errors,
            limit=args.limit, storage_options=options, progress=not args.no_progress, **extra,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e


def confidence_config(args: argparse.Namespace):
    """--confidence* -> model.ConfidenceConfig, or None for --confidence none."""
    from model.confidence import ConfidenceConfig

    if args.confidence == "none":
        return None
    return ConfidenceConfig(
        name=args.confidence, entropy_type=args.confidence_entropy_type, alpha=args.confidence_alpha,
        entropy_norm=args.confidence_entropy_norm, aggregation=args.confidence_aggregation,
        exclude_blank=not args.confidence_include_blank, tdt_include_duration=args.confidence_tdt_duration,
    )


RAY_DATA_LOGGING = str(Path(__file__).with_name("ray_data_logging.yaml"))


def connect(address: str | None) -> bool:
    """Join `address`, or start an embedded local Ray; True if this call started Ray. Ray's INFO/WARNING
    lines go to its log files only (the console shows our progress bar and the summary)."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)  # a user's own config wins
    import ray

    if ray.is_initialized():
        return False  # already connected (a notebook, a test, or `ray job submit` driver)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # More logical CPUs than cores: decode tasks, the model actor and commit tasks must all be
        # schedulable at once, or a 2-core machine starves the pipeline (they mostly wait on I/O).
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    return True


RAY_CONSOLE_LOG = os.path.join(tempfile.gettempdir(), f"parakeet-ray-console-{os.getpid()}.log")


@contextlib.contextmanager
def native_stderr_to(path: str):
    """Send file descriptor 2 (what native code such as Ray's C++ core worker prints) to `path`, while
    Python's sys.stderr (our progress bar and messages) keeps writing to the console. A no-op when
    sys.stderr is not the process's fd 2 (a captured or replaced stream)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    previous, sys.stderr = sys.stderr, console
    try:
        yield
    finally:
        console.flush()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


def _cause(e: BaseException) -> str:
    """The innermost cause of a Ray task failure, as 'Type: message' (first line)."""
    while True:
        inner = getattr(e, "cause", None) or e.__cause__
        if inner is None or inner is e:
            break
        e = inner
    first = (str(e).strip().splitlines() or [""])[-1 if type(e).__name__.startswith("Ray") else 0]
    return f"{type(e).__name__}: {first}"


def run_command(args: argparse.Namespace) -> int:
    from pipeline.job import format_summary, prepare, run
    from pipeline.lease import Lease, LeaseHeld
    from pipeline.sink import OutputError, check_writable
    from pipeline.sources import InputError

    import model

    try:
        cfg = build_config(args)
        try:  # the model is resolved and its config read before Ray starts (local, fsspec URI or hub id)
            model_config = model.inspect(cfg.model_uri)
        except (model.CheckpointError, model.ConfigError) as e:
            raise UsageError(f"--model: {e}") from e
        if args.lease_timeout <= 0:
            raise UsageError("--lease-timeout must be positive")
        check_writable(cfg.output_uri, cfg.storage_options or None)  # before the lease creates anything there
        with Lease(cfg.output_uri, cfg.storage_options or None, args.lease_timeout) as lease:  # one job per OUTPUT
            if lease.taken_over:
                print(f"took over a stale lease on {cfg.output_uri} from {lease.taken_over.get('owner')}", file=sys.stderr)
            plan = prepare(cfg)  # INPUT and OUTPUT are checked before Ray starts
            with native_stderr_to(RAY_CONSOLE_LOG):  # Ray's C++ console lines go to a log file, ours stay
                started = connect(args.address)
                from ray.data import DataContext

                DataContext.get_current().enable_progress_bars = False  # our one-line bar replaces Ray's bars
                try:
                    summary = run(cfg, plan, lease=lease, model_config=model_config)
                finally:
                    if started:
                        import ray

                        ray.shutdown()
    except (UsageError, InputError, OutputError, LeaseHeld) as e:
        print(f"parakeet-ray transcribe: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the model stage failed for a reason no single input explains: the job fails
        print(f"parakeet-ray transcribe: failed: {_cause(e)}\n(inputs already committed stay; rerun after the fix "
              f"to transcribe the rest; Ray's console output: {RAY_CONSOLE_LOG})", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(json.dumps(summary))
    return 0  # per-input failures are rows with `error` set, counted in the summary
