"""`parakeet-ray finetune`: train a Parakeet TDT model across a Ray cluster with Ray Train.

Each worker runs jobs/train_loop.train with the model wrapped in DDP (gloo on CPU, nccl on GPU),
bf16 autocast on GPU; rank 0 validates (WER/CER) and writes checkpoints, which Ray Train persists to
OUTPUT/_ray and uses to resume after a worker failure (FailureConfig). At the end the latest and the
best (lowest val WER) checkpoints are copied to OUTPUT/last and OUTPUT/best: self-describing
folders that `model.load` and transformers' `ParakeetForTDT.from_pretrained` both read.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

CRASH_ENV = "PARAKEET_RAY_TEST_CRASH_AT_STEP"  # test hook: "<step>:<marker file>" makes rank 1 exit once


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune (or train) a Parakeet TDT model with Ray Train",
                              description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint to start from (.nemo, folder, URI, hub id); keeps its tokenizer")
    src.add_argument("--preset", help="train from scratch with this architecture (trains a SentencePiece tokenizer on TRAIN)")
    p.add_argument("--train", required=True,
                   help="training manifest (Parquet/CSV/JSONL: audio_uri, text[, duration_s]) or a `parakeet-ray "
                        "transcribe` OUTPUT (pseudo-labels; its error rows are never used)")
    p.add_argument("--where", default=None,
                   help='keep only the --train rows matching this DuckDB condition over the `transcripts` view, e.g. '
                        '"confidence >= 0.9 AND duration_s BETWEEN 1 AND 30"')
    p.add_argument("--val", default=None, help="validation manifest or transcribe OUTPUT (WER/CER each epoch; picks the best checkpoint)")
    p.add_argument("--output", required=True, help="folder or URI for checkpoints and metrics")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto', 'ray://...'); default: a local Ray")
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=int, default=10)
    steps.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4, for fine-tuning)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio seconds per batch per worker")
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
    from jobs.train_loop import TrainConfig

    options = json.loads(args.storage_options) if args.storage_options else {}
    kw = dict(train=args.train, val=args.val, where=args.where, output=args.output, model=args.model, preset=args.preset,
              vocab_size=args.vocab_size, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
              warmup_steps=args.warmup_steps, batch_seconds=args.batch_seconds, sigma=args.sigma, omega=args.omega,
              fused_loss=not args.materialise_logits, storage_options=options)
    if args.no_spec_augment:
        kw["spec_augment"] = None
    return TrainConfig(**kw)


def train_func(config: dict) -> None:
    """Ray Train worker entry: resume from Ray's latest checkpoint if any, then run the shared loop."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    from jobs.train_loop import TrainConfig, train
    from model.spec_augment import SpecAugmentConfig

    raw = dict(config["cfg"])
    if raw.get("spec_augment") is not None:
        raw["spec_augment"] = SpecAugmentConfig(**raw["spec_augment"])
    cfg = TrainConfig(**raw)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads") or 1)))  # Ray sets OMP_NUM_THREADS=1: use the CPUs we reserved
    resume = None
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts the group after a failure
    if checkpoint is not None:
        resume = checkpoint.to_directory(tempfile.mkdtemp(prefix="parakeet-resume-"))
    elif config.get("resume_uri"):  # a rerun of the same command continues from OUTPUT/last
        import fsspec

        fs, path = fsspec.core.url_to_fs(config["resume_uri"], **cfg.storage_options)
        resume = tempfile.mkdtemp(prefix="parakeet-resume-")
        fs.get(path.rstrip("/") + "/", resume + "/", recursive=True)
    device = ray.train.torch.get_device()

    def report(metrics, ckpt_dir):
        if rank == 0:  # a per-epoch history next to the checkpoints, on any storage
            import fsspec

            fs, path = fsspec.core.url_to_fs(cfg.output.rstrip("/") + "/epochs.jsonl", **cfg.storage_options)
            with fs.open(path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def should_fail(step: int) -> None:
        spec = config.get("crash")
        if spec and rank == 1:
            at, marker = spec.split(":", 1)
            if step == int(at) and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # a worker dying mid-run: Ray Train restarts the group from the last checkpoint

    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            train(cfg, report, resume_from=resume, rank=rank, world=world, device=device,
                  wrap=lambda net: ray.train.torch.prepare_model(net), should_fail=should_fail)
    finally:
        if resume is not None:  # the downloaded checkpoint was read at the start (weights, tokenizer bytes)
            import shutil

            shutil.rmtree(resume, ignore_errors=True)


SELECTED = "train_selected.parquet"  # the rows a run trains on, when --train is a transcribe OUTPUT or --where is given
SELECTION = "train_selection.json"  # how they were chosen, and how many rows each rule dropped


def select_training_rows(cfg):
    """Resolve --train / --val that are transcribe OUTPUTs, and --where, into manifests under OUTPUT.

    A transcribe OUTPUT trains on its successful rows (`error IS NULL`, non-empty text) that match
    `cfg.where`; a manifest is filtered by `cfg.where` the same way (its columns form the `transcripts`
    view). The selection is written to OUTPUT/train_selected.parquet (what every worker reads) with
    its counts in OUTPUT/train_selection.json.
    """
    import fsspec

    from jobs.query import QueryError, connect, run_sql
    from pipeline.sources import InputError, read_manifest_table

    fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    changes = {}
    for field_name, where in (("train", cfg.where), ("val", None)):
        source = getattr(cfg, field_name)
        if source is None:
            continue
        is_output = _is_transcribe_output(source, cfg.storage_options)
        if not is_output and where is None:
            continue
        if is_output:
            try:
                con = connect(source, cfg.storage_options)
            except QueryError as e:
                raise InputError(str(e)) from e
            total = con.execute("SELECT count(*) FROM transcripts").fetchall()[0][0]
            errors = con.execute("SELECT count(*) FROM transcripts WHERE error IS NOT NULL").fetchall()[0][0]
            usable = "error IS NULL AND text IS NOT NULL AND trim(text) <> ''"
        else:
            import duckdb

            con = duckdb.connect()
            con.register("transcripts", read_manifest_table(source, cfg.storage_options))
            total, errors, usable = con.execute("SELECT count(*) FROM transcripts").fetchall()[0][0], 0, "TRUE"
        columns = [r[0] for r in con.execute("DESCRIBE transcripts").fetchall()]
        if "text" not in columns:
            raise InputError(f"--{field_name} {source} has no 'text' column (columns: {columns})")
        empty = con.execute(f"SELECT count(*) FROM transcripts WHERE NOT ({usable})").fetchall()[0][0] - errors
        wanted = "audio_uri, text" + (", duration_s" if "duration_s" in columns else "")
        sql = f"SELECT {wanted} FROM transcripts WHERE {usable}"
        if where:
            sql += f" AND ({where})"
        try:
            table = run_sql(con, sql + " ORDER BY audio_uri")
        except QueryError as e:
            raise InputError(f"--where {where!r}: {e}") from e
        kept = table.num_rows
        if not kept:
            raise InputError(f"--{field_name} {source}: no rows left to train on ({total} rows, {errors} errors"
                             + (f", --where {where!r}" if where else "") + ")")
        name = SELECTED if field_name == "train" else f"val_{SELECTED}"
        import pyarrow.parquet as pq

        with fs.open(f"{root}/{name}", "wb") as f:
            pq.write_table(table, f)
        counts = {"source": source, "where": where, "rows": total, "error_rows": errors, "empty_text_rows": empty,
                  "filtered_out": total - errors - empty - kept, "selected": kept}
        changes[field_name] = (cfg.output.rstrip("/") + "/" + name, counts)
        print(f"{field_name}: {kept} of {total} rows from {source} ({errors} error rows never used"
              + (f", {counts['filtered_out']} not matching --where" if where else "") + ")")
    if not changes:
        return cfg
    with fs.open(f"{root}/{SELECTION}", "w") as f:
        f.write(json.dumps({k: v[1] for k, v in changes.items()}, indent=2))
    return dataclasses.replace(cfg, **{k: v[0] for k, v in changes.items()})


def _is_transcribe_output(uri: str, storage_options: dict) -> bool:
    """A folder with transcripts/*.parquet (what `parakeet-ray transcribe` writes)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return fs.isdir(f"{path.rstrip('/')}/transcripts") and bool(fs.glob(f"{path.rstrip('/')}/transcripts/*.parquet"))


def run_command(args: argparse.Namespace) -> int:
    from pipeline.sources import InputError

    cfg = _config(args)
    try:
        return run(cfg, address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                   cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures)
    except InputError as e:
        print(f"parakeet-ray finetune: error: {e}", file=sys.stderr)
        return 2


def run(cfg, address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
        max_failures: int = 3) -> int:
    import fsspec
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    fs.makedirs(root, exist_ok=True)
    cfg = select_training_rows(cfg)  # before Ray starts: a bad --where or an empty selection fails at once
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    storage = cfg.output.rstrip("/") + "/_ray"
    if "://" not in storage:
        storage = os.path.abspath(storage)
    last = f"{root}/last"
    resume_uri = cfg.output.rstrip("/") + "/last" if fs.exists(f"{last}/trainer_state.pt") else None
    if resume_uri:
        print(f"resuming from {resume_uri}")
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "resume_uri": resume_uri, "crash": os.environ.get(CRASH_ENV),
                           "threads": cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name="finetune", storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_wer" if cfg.val else "train_loss",
                                               checkpoint_score_order="min"),
        ),
    )
    result = trainer.fit()
    if result.error:
        print(f"finetune failed: {result.error}", file=sys.stderr)
        return 1
    best = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_wer", cm[1]["train_loss"]))[0] if result.best_checkpoints else result.checkpoint
    for name, ckpt in (("last", result.checkpoint), ("best", best)):
        if ckpt is None:
            continue
        dest = f"{root}/{name}"
        if fs.exists(dest):
            fs.rm(dest, recursive=True)
        with ckpt.as_directory() as d:
            fs.put(d.rstrip("/") + "/", dest + "/", recursive=True)
    with fs.open(f"{root}/metrics.json", "w") as f:
        f.write(json.dumps(result.metrics, default=str, indent=2))
    print(json.dumps({k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))}))
    print(f"checkpoints: {cfg.output.rstrip('/')}/last, {cfg.output.rstrip('/')}/best")
    return 0
