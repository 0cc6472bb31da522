"""`parakeet-ray finetune`: train a Parakeet TDT model across a Ray cluster with Ray Train.

A thin driver: flags -> TrainConfig -> plan the training rows (pipeline/training/plan.py) -> a Ray
Dataset that decodes them in CPU tasks (ingest.py) -> TorchTrainer running the explicit loop
(loop.py) on every worker. Checkpoints go to OUTPUT/_ray (Ray Train's storage, local or S3); the
best by validation WER to OUTPUT/best and the last to OUTPUT/last, folders that `model.load` and
transformers' `ParakeetForTDT.from_pretrained` both read. See docs/training.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune (or train) a Parakeet TDT model with Ray Train",
                              description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint to start from (.nemo, folder, URI, hub id); keeps its tokenizer")
    src.add_argument("--preset", help="train from scratch with this architecture (trains a SentencePiece tokenizer on TRAIN)")
    p.add_argument("--train", required=True,
                   help="training manifest(s): a Parquet/CSV/JSONL file, a folder or glob of shards (audio_uri, text[, "
                        "duration_s]; NeMo's audio_filepath/duration too), or a `parakeet-ray transcribe` OUTPUT "
                        "(pseudo-labels; its error rows are never used)")
    p.add_argument("--where", default=None,
                   help='keep only the --train rows matching this DuckDB condition over the `transcripts` view, e.g. '
                        '"confidence >= 0.9 AND duration_s BETWEEN 1 AND 30"')
    p.add_argument("--val", default=None, help="validation manifest or transcribe OUTPUT (WER/CER each epoch; picks the best checkpoint)")
    p.add_argument("--output", required=True, help="folder or URI for checkpoints and metrics")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto', 'ray://...'); default: a local Ray")
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker: its torch threads (default 1)")
    p.add_argument("--placement-strategy", default="PACK", choices=("PACK", "SPREAD", "STRICT_SPREAD"),
                   help="how workers are placed on nodes (Ray placement group strategy; default PACK)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=int, default=10)
    steps.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4, for fine-tuning)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio seconds per micro-batch per worker")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the prediction network and joint only")
    p.add_argument("--min-duration", type=float, default=0.0, help="skip shorter utterances (seconds; default 0)")
    p.add_argument("--max-duration", type=float, default=40.0, help="skip longer utterances (seconds; default 40)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="fail when more training rows than this are bad (unreadable audio, empty or unencodable text, "
                        "T < U, too long); default 0.01")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="optimizer steps between checkpoints (and every epoch end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="latest checkpoints kept in OUTPUT/_ray (OUTPUT/best apart)")
    p.add_argument("--val-every", type=int, default=None, help="optimizer steps between validations (and every epoch end)")
    p.add_argument("--log-every", type=int, default=10, help="optimizer steps between progress lines (default 10)")
    p.add_argument("--buffer-batches", type=int, default=16, help="batches of audio a worker sorts by duration at a time")
    p.add_argument("--vocab-size", type=int, default=128, help="tokenizer size when training from scratch")
    p.add_argument("--no-spec-augment", action="store_true")
    p.add_argument("--sigma", type=float, default=0.0, help="TDT logit under-normalisation (paper: 0.05; default 0)")
    p.add_argument("--omega", type=float, default=0.0, help="probability of a step using the plain RNN-T loss (default 0)")
    p.add_argument("--materialise-logits", action="store_true",
                   help="build the full (B, T, U+1, V) logits before the loss instead of the fused slab-wise joint+loss")
    p.add_argument("--max-failures", type=int, default=3, help="worker failures to recover from (default 3)")
    p.add_argument("--storage-options", default=None, help="JSON of fsspec options for manifests, audio and OUTPUT")
    p.set_defaults(func=run_command)


def _config(args) -> "TrainConfig":
    from pipeline.training.config import TrainConfig

    options = json.loads(args.storage_options) if args.storage_options else {}
    kw = dict(train=args.train, val=args.val, where=args.where, output=args.output, model=args.model, preset=args.preset,
              vocab_size=args.vocab_size, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
              warmup_steps=args.warmup_steps, batch_seconds=args.batch_seconds, grad_accum=args.grad_accum,
              freeze_encoder=args.freeze_encoder, min_duration=args.min_duration, max_duration=args.max_duration,
              max_bad_fraction=args.max_bad_fraction, checkpoint_every=args.checkpoint_every,
              keep_checkpoints=args.keep_checkpoints, val_every=args.val_every, log_every=args.log_every,
              buffer_batches=args.buffer_batches, sigma=args.sigma, omega=args.omega,
              fused_loss=not args.materialise_logits, storage_options=options)
    if args.no_spec_augment:
        kw["spec_augment"] = None
    return TrainConfig(**kw)


def run_command(args: argparse.Namespace) -> int:
    """The CLI: a quiet console (Ray's own lines go to its log files), the progress lines read back from
    OUTPUT/metrics.jsonl as rank 0 writes them, and the summary."""
    import math

    from jobs.transcribe import RAY_CONSOLE_LOG, RAY_DATA_LOGGING, native_stderr_to
    from pipeline.sources import InputError

    try:
        cfg = _config(args)
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)
        with native_stderr_to(RAY_CONSOLE_LOG):
            import logging

            import ray

            if not ray.is_initialized():
                local = not (args.address or os.environ.get("RAY_ADDRESS"))
                # an embedded Ray gets the workers' CPUs on top of the machine's: the decode tasks always have some
                extra = {"include_dashboard": False, "num_cpus": (os.cpu_count() or 1) + math.ceil(args.workers * args.cpus_per_worker)}
                ray.init(address=args.address, log_to_driver=False, logging_level=logging.ERROR, **(extra if local else {}))
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            with _ProgressTail(cfg):
                return run(cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                           cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                           placement_strategy=args.placement_strategy)
    except (InputError, ValueError) as e:
        print(f"parakeet-ray finetune: error: {e}", file=sys.stderr)
        return 2


class _ProgressTail:
    """Prints the rows rank 0 appends to OUTPUT/metrics.jsonl as progress lines, polling every few seconds."""

    def __init__(self, cfg, every_s: float = 3.0):
        self.cfg, self.every_s = cfg, every_s

    def __enter__(self):
        import threading

        import fsspec

        self.fs, root = fsspec.core.url_to_fs(self.cfg.output, **self.cfg.storage_options)
        self.path = f"{root.rstrip('/')}/metrics.jsonl"
        self.seen = self._rows()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _rows(self) -> int:
        try:
            with self.fs.open(self.path, "r") as f:
                return sum(1 for line in f if line.strip())
        except (FileNotFoundError, OSError):
            return 0

    def _loop(self):
        from pipeline.training.loop import _progress_line

        while not self.stop.wait(self.every_s):
            self._print(_progress_line)
        self._print(_progress_line)

    def _print(self, fmt):
        try:
            with self.fs.open(self.path, "r") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
        except (FileNotFoundError, OSError):
            return
        if len(lines) < self.seen:  # rewritten on resume: rows after the checkpoint were dropped
            self.seen = len(lines)
        for line in lines[self.seen:]:
            print(fmt(json.loads(line)), flush=True)
        self.seen = len(lines)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)


def run(cfg, address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
        max_failures: int = 3, callback=None, placement_strategy: str = "PACK") -> int:
    """Plan, then train on Ray. `callback(event)` runs on the workers after every micro-batch and step
    (pipeline/training/loop.py): tests use it to log utterance ids and to kill a worker."""
    import math

    import fsspec
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import model
    from pipeline.sources import InputError
    from pipeline.training.ingest import training_dataset
    from pipeline.training.loop import train_func
    from pipeline.training.plan import (build_plan, estimate_batches, plan_tokenizer, read_rows, select_training_rows,
                                        train_durations)

    cfg = _absolute(cfg)  # Ray workers run in other folders: relative local paths must not reach them
    fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    fs.makedirs(root, exist_ok=True)
    cfg = select_training_rows(cfg)  # before Ray starts: a bad --where or an empty selection fails at once
    if cfg.model is None and cfg.preset is None:
        raise InputError("give --model (a checkpoint to fine-tune) or --preset (train from scratch)")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    free = ray.cluster_resources().get("CPU", 0.0) - workers * cpus_per_worker
    if free < cfg.decode_cpus:
        raise InputError(f"{workers} worker(s) x {cpus_per_worker:g} CPUs leave {max(free, 0):g} of the cluster's "
                         f"{ray.cluster_resources().get('CPU', 0):g} CPUs for decoding (a decode task needs {cfg.decode_cpus:g}): "
                         "lower --workers / --cpus-per-worker or add CPU nodes")
    plan = build_plan(cfg)
    if plan.bad > cfg.max_bad_fraction * plan.rows:
        raise InputError(f"{plan.bad} of the {plan.rows} training rows are bad before any audio is read "
                         f"({plan.bad / plan.rows:.1%}, over --max-bad-fraction {cfg.max_bad_fraction:.1%}): {plan.skipped}")
    tokenizer = plan_tokenizer(cfg, plan) if cfg.preset else model.load(cfg.model).tokenizer
    if tokenizer is None:
        raise InputError(f"--model {cfg.model} has no tokenizer: it cannot be trained on text")
    batches = estimate_batches(train_durations(plan, cfg.storage_options), cfg.batch_seconds, cfg.buffer_batches, cfg.seed, workers)
    steps_per_epoch = max(1, math.ceil(batches / cfg.grad_accum))
    print(f"plan: {plan.rows} rows, {plan.audio_seconds / 3600:.2f} h to train on, skipped before decoding: "
          f"{plan.skipped or 'none'}; ~{steps_per_epoch} steps per epoch on {workers} worker(s)")
    storage, storage_fs = _ray_storage(cfg)
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "tokenizer": tokenizer.data, "threads": cpus_per_worker,
                           "plan": {"rows": plan.rows, "skipped": plan.skipped, "steps_per_epoch": steps_per_epoch},
                           "val_rows": read_rows(cfg.val, cfg.storage_options) if cfg.val else None, "callback": callback},
        datasets={"train": training_dataset(plan, cfg, tokenizer.data, workers)},
        dataset_config=_exactly_once_split(),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, placement_strategy=placement_strategy,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
        run_config=RunConfig(name="finetune", storage_path=storage, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )
    last_before = _last_metrics(fs, root)  # an earlier run's last row, if any: rank 0 appends the new ones
    result = trainer.fit()
    metrics = _last_metrics(fs, root)
    if last_before and metrics == last_before and not result.error:  # resumed at the end: nothing was left to train
        print(f"nothing to train: {cfg.output} already holds step {metrics.get('step')} of {metrics.get('total_steps')} "
              f"(epoch {metrics.get('epoch')}); give more --max-steps or --epochs to continue")
    if result.error or metrics.get("fatal"):
        print(f"parakeet-ray finetune: failed: {metrics.get('fatal') or result.error}", file=sys.stderr)
        return 1
    if result.checkpoint is not None:
        from pipeline.training.loop import publish_model

        with result.checkpoint.as_directory() as d:
            publish_model(fs, f"{root}/last", d)
    summary = {"final": metrics, "plan": {"rows": plan.rows, "skipped_before_decoding": plan.skipped,
                                          "audio_hours": plan.audio_seconds / 3600, "steps_per_epoch": steps_per_epoch},
               "checkpoints": {n: cfg.output.rstrip("/") + "/" + n for n in ("last", "best") if fs.exists(f"{root}/{n}/config.json")}}
    with fs.open(f"{root}/summary.json", "w") as f:
        f.write(json.dumps(summary, default=str, indent=2))
    print(f"done: step {metrics.get('step')}, epoch {metrics.get('epoch')}, skipped {metrics.get('skipped') or 'none'}")
    made = [f"{cfg.output.rstrip('/')}/{name}" for name in ("last", "best") if fs.exists(f"{root}/{name}/config.json")]
    print(f"checkpoints: {', '.join(made) or 'none'}")
    return 0


def _last_metrics(fs, root: str) -> dict:
    """The last row of OUTPUT/metrics.jsonl ({} when there is none)."""
    if not fs.exists(f"{root}/metrics.jsonl"):
        return {}
    with fs.open(f"{root}/metrics.jsonl", "r") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def _absolute(cfg):
    def fix(value):
        if value is None or "://" in value or os.path.isabs(value) or not os.path.exists(value) and value == cfg.model:
            return value  # URIs, absolute paths, hub ids (a --model that is no local path)
        return os.path.abspath(value)

    return dataclasses.replace(cfg, **{k: fix(getattr(cfg, k)) for k in ("train", "val", "output", "model")})


def _ray_storage(cfg):
    """OUTPUT/_ray as Ray Train's storage: a local absolute path, or the object store through fsspec
    (so --storage-options and the AWS environment apply as they do to everything else)."""
    if "://" not in cfg.output or cfg.output.startswith("file://"):
        return os.path.abspath(cfg.output.removeprefix("file://").rstrip("/") + "/_ray"), None
    import fsspec
    import pyarrow.fs as pafs

    fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    return root.rstrip("/") + "/_ray", pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _exactly_once_split():
    """Ray Train's DataConfig, but splitting with equal=False: equal=True may drop rows to even the
    workers out, and every utterance must be used once per epoch (the loop evens the steps out itself)."""
    from ray.train import DataConfig

    class ExactlyOnceSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            hints = worker_node_ids if self._enable_shard_locality else None
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    out[i][name] = split
            return out

    return ExactlyOnceSplit()
