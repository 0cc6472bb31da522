"""The training loop, run by every Ray Train worker: explicit, top to bottom.

    for each optimizer step:
        take up to --grad-accum micro-batches from this worker's stream (ingest.bucket_batches)
        agree with the other workers how many there are (all_reduce): none anywhere -> the epoch is over
        forward -> TDT loss -> backward for each (DDP averages gradients; a worker with fewer micro-batches
            runs a zero-weight step, so all stay in lock-step and every utterance is used exactly once)
        clip -> AdamW step -> LR schedule (warmup + cosine over the planned number of steps)
        every --log-every steps: a progress line and a row of OUTPUT/metrics.jsonl
        every --val-every / --checkpoint-every steps and at each epoch end: validate (rank 0), checkpoint

Resume (a worker lost: FailureConfig; or the same command run again: Ray Train restores the run) loads the
latest checkpoint: weights, optimizer, step, epoch, best WER, RNG states and which utterances the epoch
has used; the rest of the epoch streams the other utterances (state.py, docs/training.md).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
import time
from collections import Counter
from itertools import islice
from typing import Any, Callable

import numpy as np
import torch

import model

from .config import BAD_REASONS, SKIP_REASONS, TrainConfig
from .ingest import MicroBatch, bucket_batches, collate, iter_rows
from .joint_loss import tdt_joint_loss
from .loss import tdt_loss
from .schedule import warmup_cosine
from .spec_augment import spec_augment
from .state import RankState, UidSet, load_checkpoint, restore_rng, save_checkpoint

ROWS_PER_FETCH = 32  # rows per iter_batches call on the worker


class TrainForward(torch.nn.Module):
    """encoder + predictor + joint + TDT loss as one module so DDP sees every trained parameter in forward."""

    def __init__(self, m: model.ParakeetTDT, cfg: TrainConfig):
        super().__init__()
        self.m = m
        # the fused joint loss hard-codes the ReLU joint (every Parakeet model); others materialise the logits
        self.sigma, self.omega, self.freeze_encoder = cfg.sigma, cfg.omega, cfg.freeze_encoder
        self.fused = cfg.fused_loss and m.config.joint.activation == "relu"

    def forward(self, feats, flen, targets, target_lengths):
        m, joint = self.m, self.m.joint
        with torch.no_grad() if self.freeze_encoder else contextlib.nullcontext():
            enc, enc_len = m.encoder(feats.to(m.dtype), flen)
        sos = torch.full_like(targets[:, :1], m.config.blank_id)
        pred, _ = m.predictor(torch.cat([sos, targets], dim=1))  # (B, U+1, H)
        args = (targets, enc_len, target_lengths, m.config.blank_id, list(m.config.durations))
        if self.fused:
            return tdt_joint_loss(joint.project_encoder(enc), joint.project_predictor(pred), joint.head.weight,
                                  joint.head.bias, *args, sigma=self.sigma, omega=self.omega, reduction="mean",
                                  dropout=joint.dropout if joint.training else 0.0)
        token_logits, duration_logits = joint.split(joint(enc, pred))  # (B, T, U+1, V+1), (B, T, U+1, D)
        return tdt_loss(token_logits, duration_logits, *args, sigma=self.sigma, omega=self.omega, reduction="mean")


def training_loss(net: torch.nn.Module, m: model.ParakeetTDT, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """TDT loss of one batch. `net` is TrainForward (maybe DDP-wrapped); features are not part of DDP."""
    dev = m.device
    feats, flen = m.preprocessor(batch["audio"].to(dev, non_blocking=True), batch["lengths"].to(dev, non_blocking=True))
    if cfg.spec_augment is not None:
        feats = spec_augment(feats, flen, cfg.spec_augment)
    return net(feats, flen, batch["targets"].to(dev, non_blocking=True), batch["target_lengths"].to(dev, non_blocking=True))


def build_model(cfg: TrainConfig, tokenizer_data: tuple[str, bytes]) -> model.ParakeetTDT:
    if cfg.model:
        return model.load(cfg.model)
    import dataclasses

    from model.config import preset

    tok = model.Tokenizer(data=tokenizer_data)
    mc = preset(cfg.preset, vocab_size=tok.vocab_size)
    for section, values in cfg.overrides.items():
        mc = dataclasses.replace(mc, **{section: dataclasses.replace(getattr(mc, section), **values)})
    torch.manual_seed(cfg.seed)  # every rank builds the same weights (DDP broadcasts rank 0's anyway)
    return model.ParakeetTDT(mc, tok)


def train_mode(m: model.ParakeetTDT, cfg: TrainConfig) -> None:
    m.train()
    if cfg.freeze_encoder:
        m.encoder.eval()  # no dropout, BatchNorm statistics kept


def encoder_frames(m: model.ParakeetTDT) -> Callable[[int], int]:
    """Encoder frames T for an input of n samples (what T >= U is checked against)."""
    from model.subsampling import conv_output_lengths

    stages = m.encoder.subsampling.n_stages
    return lambda n: int(conv_output_lengths(m.preprocessor.frame_lengths(torch.tensor([n])), stages)[0])


class Validator:
    """Greedy WER / CER (jiwer) on the validation rows, batched; rank 0 decodes them once and keeps them."""

    def __init__(self, rows: list[dict[str, Any]], cfg: TrainConfig):
        self.rows, self.cfg, self.audio = rows, cfg, None

    def __call__(self, m: model.ParakeetTDT) -> dict[str, float]:
        import jiwer

        from pipeline.decode import decode_one

        if self.audio is None:
            decoded = [(decode_one(r["audio_uri"], self.cfg.storage_options), r["text"]) for r in self.rows if r.get("text")]
            self.audio = [(wave, text) for (wave, _, err, _), text in decoded if not err and len(wave)]
            if not self.audio:
                raise ValueError(f"--val {self.cfg.val}: no row could be decoded")
        m.eval()
        with torch.no_grad():
            hyps = m.transcribe([w for w, _ in self.audio], batch_size=self.cfg.eval_batch_size, timestamps=False, confidence=None)
        train_mode(m, self.cfg)
        refs, outs = [t for _, t in self.audio], [h.text for h in hyps]
        return {"val_wer": float(jiwer.wer(refs, outs)), "val_cer": float(jiwer.cer(refs, outs)), "val_utterances": len(refs)}


def _all_reduce(values: list[float], op=None) -> list[float]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _count_nodes() -> int:
    """Distinct Ray nodes the workers run on."""
    import ray
    import torch.distributed as dist

    mine = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return 1
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return len(set(everyone))


def train_func(config: dict[str, Any]) -> None:
    """Ray Train worker entry. `config`: cfg (TrainConfig as a dict), tokenizer (kind, bytes), plan (rows, bad,
    steps_per_epoch), threads, val_rows, and optional `callback(event: dict)` called after every micro-batch
    and optimizer step (events carry rank, epoch, step, uids): how tests observe and interrupt a run."""
    import fsspec
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg = TrainConfig.from_dict(config["cfg"])
    callback = config.get("callback") or (lambda event: None)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads") or 1)))  # Ray sets OMP_NUM_THREADS=1: use the CPUs reserved
    device = ray.train.torch.get_device()
    plan = config["plan"]

    # --- model, optimizer, schedule; resume from the latest checkpoint when Ray Train has one ----------
    restored, checkpoint = None, ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            m = model.load(folder)
            restored = load_checkpoint(folder, rank)
    else:
        m = build_model(cfg, config["tokenizer"])
    m = m.to(device)
    if cfg.freeze_encoder:
        m.encoder.requires_grad_(False)
    train_mode(m, cfg)
    net = ray.train.torch.prepare_model(TrainForward(m, cfg)) if world > 1 or device.type == "cuda" else TrainForward(m, cfg)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    total = cfg.max_steps or cfg.epochs * plan["steps_per_epoch"]
    step, epoch, best = 0, 0, math.inf
    state = RankState()
    if restored is not None:
        opt.load_state_dict(restored.trainer["optimizer"])
        step, epoch, best = restored.trainer["step"], restored.trainer["epoch"], restored.trainer["best_wer"]
        if rank == 0:  # the union travels on with rank 0; the others start this epoch's record afresh
            state = RankState(restored.consumed, Counter(restored.skipped))
        if restored.mine is not None:
            restore_rng(restored.mine)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total), last_epoch=step - 1)
    frames = encoder_frames(m)
    validate = Validator(config["val_rows"], cfg) if rank == 0 and config.get("val_rows") else None
    metrics_log = _MetricsLog(cfg, step) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    nodes = _count_nodes()
    out_fs, out_root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)

    # --- what a report does: all ranks agree on the numbers; rank 0 validates and logs; all checkpoint --
    window = {"t0": time.perf_counter(), "loss": 0.0, "batches": 0, "audio_s": 0.0, "tokens": 0, "wait": 0.0,
              "epoch_loss": 0.0, "epoch_batches": 0}
    run_t0, run_step0 = time.perf_counter(), step

    def report(reason: str, with_checkpoint: bool, with_val: bool, epoch_skipped: Counter | None = None) -> bool:
        """`epoch_skipped`: the finished epoch's counts, at an epoch end (the state is already the next epoch's)."""
        nonlocal best
        counts = state.skipped if epoch_skipped is None else epoch_skipped
        skip_vec = [float(counts.get(r, 0)) for r in SKIP_REASONS]
        sums = _all_reduce([window["loss"], window["batches"], window["audio_s"], window["tokens"], window["wait"],
                            window["epoch_loss"], window["epoch_batches"]] + skip_vec)
        elapsed = time.perf_counter() - window["t0"]
        skipped = {r: int(n) for r, n in zip(SKIP_REASONS, sums[7:]) if n}
        for r, n in plan["skipped"].items():
            skipped[r] = skipped.get(r, 0) + n  # plan-time skips (empty text, durations) count in every epoch
        bad = sum(n for r, n in skipped.items() if r in BAD_REASONS)
        rate = (time.perf_counter() - run_t0) / max(1, step - run_step0)
        loss_sum, n = (sums[5], sums[6]) if reason == "epoch" else (sums[0], sums[1])  # an epoch's report: its mean
        metrics = {"event": reason, "step": step, "epoch": epoch, "train_loss": loss_sum / max(1.0, n),
                   "lr": sched.get_last_lr()[0], "audio_s_per_s": sums[2] / max(elapsed, 1e-9),
                   "tokens_per_s": sums[3] / max(elapsed, 1e-9), "data_wait": sums[4] / max(world * elapsed, 1e-9),
                   "skipped": skipped, "bad_fraction": bad / plan["rows"], "train_rows": plan["rows"], "workers": world, "nodes": nodes,
                   "eta_s": max(0, total - step) * rate, "total_steps": total}
        fatal = None
        if bad > cfg.max_bad_fraction * plan["rows"]:
            fatal = (f"{bad} of the {plan['rows']} training rows are bad ({bad / plan['rows']:.1%}, over --max-bad-fraction "
                     f"{cfg.max_bad_fraction:.1%}): {skipped}")
            metrics["fatal"] = fatal
        if rank == 0 and with_val and validate is not None:
            metrics.update(validate(m))
        if rank == 0:
            score = metrics.get("val_wer", metrics["train_loss"] if reason == "epoch" else math.inf)
            metrics["best"] = bool(with_checkpoint and score < best)
            best = min(best, score) if with_checkpoint else best
            metrics_log.write(metrics, force=with_checkpoint or fatal is not None or (cfg.max_steps is not None and step >= total))
            print(_progress_line(metrics), flush=True)
        window.update(t0=time.perf_counter(), loss=0.0, batches=0, audio_s=0.0, tokens=0, wait=0.0)
        if reason == "epoch":
            window.update(epoch_loss=0.0, epoch_batches=0)
        if not with_checkpoint or fatal:
            ray.train.report(metrics)
            return fatal is None
        with tempfile.TemporaryDirectory(prefix="parakeet-ckpt-") as tmp:
            trainer = {"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "best_wer": best, "total_steps": total}
            save_checkpoint(tmp, rank, state, m if rank == 0 else None, trainer)
            if rank == 0 and metrics["best"]:
                publish_model(out_fs, f"{out_root.rstrip('/')}/best", tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch-{epoch:04d}-step-{step:08d}")
        return True

    def skipped_row(uid: int, reason: str) -> None:
        state.consumed.add(uid)
        state.skipped[reason] += 1

    # --- the loop -------------------------------------------------------------------------------------
    last: MicroBatch | None = None
    pin = device.type == "cuda"
    resume_skip = UidSet(restored.consumed.array()) if restored is not None else UidSet()
    # --max-steps ends the run at that step; --epochs at that many epochs (`total` is then the schedule's
    # planned length: past it the LR stays at the cosine's floor)
    while (step < total) if cfg.max_steps else (epoch < cfg.epochs):
        rng = random.Random(f"{cfg.seed}:{epoch}:{rank}")
        rows = iter_rows(shard.iter_batches(batch_size=ROWS_PER_FETCH, batch_format="numpy", prefetch_batches=4))
        stream = bucket_batches(rows, cfg.batch_seconds, cfg.buffer_batches, rng, skip=resume_skip, on_skip=skipped_row,
                                frames=frames)
        epoch_over = False
        while step < total or not cfg.max_steps:
            t_wait = time.perf_counter()
            micro = list(islice(stream, cfg.grad_accum))
            window["wait"] += time.perf_counter() - t_wait
            active = _all_reduce([len(micro)])[0]
            longest = int(_all_reduce([len(micro)], dist.ReduceOp.MAX if dist.is_initialized() else None)[0])
            if active == 0:
                epoch_over = True  # every worker's stream is exhausted
                break
            scale = world / active  # DDP averages over world: this makes it the mean over the micro-batches that exist
            for i in range(longest):
                mb = micro[i] if i < len(micro) else None
                last = mb or last
                batch = collate(mb or last or _filler(), m.config.blank_id, pin)
                sync = i == longest - 1
                with contextlib.nullcontext() if sync or not hasattr(net, "no_sync") else net.no_sync():
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        loss = training_loss(net, m, batch, cfg)
                    (loss * (scale if mb else 0.0)).backward()
                if mb:
                    state.consumed.update(mb.uids)
                    window["loss"] += loss.item()
                    window["batches"] += 1
                    window["epoch_loss"] += loss.item()
                    window["epoch_batches"] += 1
                    window["audio_s"] += mb.audio_seconds
                    window["tokens"] += mb.num_tokens
                    callback({"event": "batch", "rank": rank, "epoch": epoch, "step": step + 1, "uids": mb.uids})
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            callback({"event": "step", "rank": rank, "epoch": epoch, "step": step, "lr": sched.get_last_lr()[0],
                      "grad_norm": float(grad_norm)})
            end = cfg.max_steps is not None and step == total
            ckpt = (cfg.checkpoint_every is not None and step % cfg.checkpoint_every == 0) or end
            val = (cfg.val_every is not None and step % cfg.val_every == 0) or end
            if (ckpt or val or step % cfg.log_every == 0) and not report("step", ckpt, val):
                return
        if not epoch_over:
            break  # --max-steps reached mid-epoch (its checkpoint is written)
        epoch += 1
        finished, state, resume_skip = state.skipped, RankState(), UidSet()
        if not report("epoch", True, True, finished):
            return


def _filler() -> MicroBatch:
    """One second of silence and one token: the zero-weight batch of a worker that has had no data yet."""
    return MicroBatch([-1], [np.zeros(16000, dtype=np.float32)], [np.zeros(1, dtype=np.int32)])


def publish_model(fs, dest: str, folder: str) -> None:
    """Copy a checkpoint's model files (not the trainer or rank state) to `dest` (OUTPUT/best, OUTPUT/last)."""
    import os

    if fs.exists(dest):
        fs.rm(dest, recursive=True)
    fs.makedirs(dest, exist_ok=True)
    for name in os.listdir(folder):
        if not name.startswith("rank-") and name != "trainer_state.pt":
            fs.put(os.path.join(folder, name), f"{dest}/{name}", recursive=True)


class _MetricsLog:
    """OUTPUT/metrics.jsonl, one row per report. A resumed run first drops the rows after its checkpoint's step
    (they belong to steps being redone). On a local filesystem each row is appended; object stores cannot append,
    so the file is rewritten, at most every `rewrite_s` seconds and whenever `flush(force=True)` (checkpoints,
    the end): the uploads stay a small multiple of the file's size per hour, not one per row."""

    def __init__(self, cfg: TrainConfig, resumed_step: int, rewrite_s: float = 60.0):
        import fsspec

        from pipeline.sources import is_local

        self.fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
        self.path = f"{root.rstrip('/')}/metrics.jsonl"
        self.local, self.rewrite_s, self.last = is_local(self.fs), rewrite_s, 0.0
        self.rows: list[str] = []
        if self.fs.exists(self.path):
            with self.fs.open(self.path, "r") as f:
                self.rows = [line for line in f.read().splitlines() if line and json.loads(line).get("step", 0) <= resumed_step]
        self._rewrite()

    def write(self, metrics: dict[str, Any], force: bool = False) -> None:
        row = json.dumps(metrics, default=float)
        if self.local:
            with self.fs.open(self.path, "a") as f:
                f.write(row + "\n")
            return
        self.rows.append(row)
        if force or time.monotonic() - self.last >= self.rewrite_s:
            self._rewrite()

    def _rewrite(self) -> None:
        with self.fs.open(self.path, "w") as f:
            f.write("".join(r + "\n" for r in self.rows))
        self.last = time.monotonic()
        if self.local:
            self.rows = []  # appended from here on: nothing to keep


def _progress_line(m: dict[str, Any]) -> str:
    eta = int(m["eta_s"])
    where = f"epoch {m['epoch']} done" if m["event"] == "epoch" else f"epoch {m['epoch'] + 1}"
    parts = [f"step {m['step']}/{m['total_steps']} ({where})", f"loss {m['train_loss']:.3f}", f"lr {m['lr']:.2e}",
             f"{m['audio_s_per_s']:.0f} audio-s/s", f"{m['tokens_per_s']:.0f} tok/s", f"data wait {m['data_wait']:.0%}",
             f"ETA {eta // 3600}h{eta % 3600 // 60:02d}m{eta % 60:02d}s"]
    if m["skipped"]:
        parts.append("skipped " + ", ".join(f"{k} {v}" for k, v in sorted(m["skipped"].items())))
    if "val_wer" in m:
        parts.append(f"val WER {m['val_wer']:.3f}")
    return " | ".join(parts)
