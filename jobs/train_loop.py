"""The training loop, explicit and readable top to bottom: forward -> TDT loss -> backward -> clip ->
step -> schedule -> report. The same function runs single-process and inside each Ray Train worker
(where the model is wrapped in DDP and checkpoints/metrics go through ray.train)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import model
from model.joint_loss import tdt_joint_loss
from model.loss import tdt_loss
from model.schedule import warmup_cosine
from model.spec_augment import SpecAugmentConfig, spec_augment
from pipeline.training_data import AudioCache, Utterance, collate, duration_batches, read_training_manifest

TRAINER_STATE = "trainer_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    train: str  # manifest URI (audio_uri, text[, duration_s]) or a transcribe OUTPUT (jobs/finetune.py selects)
    output: str  # folder or URI: OUTPUT/best, OUTPUT/last, OUTPUT/metrics.jsonl
    val: str | None = None
    where: str | None = None  # DuckDB condition over the train rows (applied by the driver before training)
    model: str | None = None  # start from this checkpoint (keeps its tokenizer) ...
    preset: str | None = None  # ... or from scratch with this architecture (trains a tokenizer on TRAIN)
    vocab_size: int = 128  # tokenizer size when training from scratch
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    batch_seconds: float = 120.0  # padded audio seconds per batch per worker
    grad_clip: float = 1.0
    sigma: float = 0.0  # TDT logit under-normalisation
    omega: float = 0.0  # probability of a step using the standard RNN-T loss (NeMo's omega)
    fused_loss: bool = True  # joint + loss slab by slab (model/joint_loss.py): logits never materialised
    spec_augment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)
    seed: int = 0
    eval_batch_size: int = 32
    storage_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # preset field overrides, e.g. {"encoder": {...}}


def build_model(cfg: TrainConfig, train_utts: list[Utterance], workdir: str) -> model.ParakeetTDT:
    if cfg.model:
        return model.load(cfg.model)
    if not cfg.preset:
        raise ValueError("give --model (a checkpoint to fine-tune) or --preset (train from scratch)")
    from model.config import preset
    from model.tokenizer import train_sentencepiece

    tok = train_sentencepiece([u.text for u in train_utts], os.path.join(workdir, "tokenizer"), cfg.vocab_size)
    mc = preset(cfg.preset, vocab_size=tok.vocab_size)
    for section, values in cfg.overrides.items():
        mc = dataclasses.replace(mc, **{section: dataclasses.replace(getattr(mc, section), **values)})
    torch.manual_seed(cfg.seed)
    return model.ParakeetTDT(mc, tok)


def training_loss(m: model.ParakeetTDT, batch: dict[str, torch.Tensor], cfg: TrainConfig, core: model.ParakeetTDT | None = None) -> torch.Tensor:
    """TDT loss of one batch. `m` may be a DDP wrapper of `core`; features are not part of DDP."""
    core = core or m
    dev = core.device
    feats, flen = core.preprocessor(batch["audio"].to(dev), batch["lengths"].to(dev))
    if cfg.spec_augment is not None:
        feats = spec_augment(feats, flen, cfg.spec_augment)
    targets, t_len = batch["targets"].to(dev), batch["target_lengths"].to(dev)
    return m(feats, flen, targets, t_len)


class TrainForward(torch.nn.Module):
    """encoder + predictor + joint + TDT loss as one module so DDP sees every trained parameter in forward."""

    def __init__(self, m: model.ParakeetTDT, cfg: TrainConfig):
        super().__init__()
        self.m = m
        # the fused joint loss hard-codes the ReLU joint (every Parakeet model); others materialise the logits
        self.sigma, self.omega = cfg.sigma, cfg.omega
        self.fused = cfg.fused_loss and m.config.joint.activation == "relu"

    def forward(self, feats, flen, targets, target_lengths):
        m, joint = self.m, self.m.joint
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


def evaluate(m: model.ParakeetTDT, utts: list[Utterance], cache: AudioCache, batch_size: int) -> dict[str, float]:
    """Greedy WER and CER (jiwer) on `utts`."""
    import jiwer

    was_training = m.training
    m.eval()
    hyps = m.transcribe([cache.get(u.audio_uri) for u in utts], batch_size=batch_size, timestamps=False)
    m.train(was_training)
    refs, outs = [u.text for u in utts], [h.text for h in hyps]
    return {"wer": float(jiwer.wer(refs, outs)), "cer": float(jiwer.cer(refs, outs))}


def save_checkpoint(m: model.ParakeetTDT, folder: str, state: dict[str, Any]) -> None:
    model.save(m, folder)
    torch.save(state, os.path.join(folder, TRAINER_STATE))


def load_trainer_state(folder: str) -> dict[str, Any]:
    return torch.load(os.path.join(folder, TRAINER_STATE), map_location="cpu", weights_only=True)


def train(cfg: TrainConfig, report: Callable[[dict[str, Any], str | None], None], resume_from: str | None = None,
          rank: int = 0, world: int = 1, wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda x: x,
          device: str = "cpu", should_fail: Callable[[int], None] = lambda step: None) -> model.ParakeetTDT:
    """Train per `cfg`. `report(metrics, checkpoint_dir_or_None)` is called once per epoch (and at the end)."""
    torch.manual_seed(cfg.seed + rank)
    work = tempfile.mkdtemp(prefix="parakeet-train-")
    train_utts = read_training_manifest(cfg.train, cfg.storage_options)
    val_utts = read_training_manifest(cfg.val, cfg.storage_options) if cfg.val else []
    m = model.load(resume_from) if resume_from else build_model(cfg, train_utts, work)
    m = m.to(device).train()
    net = wrap(TrainForward(m, cfg))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    cache = AudioCache(cfg.storage_options)
    batches_per_epoch = len(duration_batches(train_utts, cache, cfg.batch_seconds, cfg.seed, rank, world))
    if batches_per_epoch == 0:
        raise ValueError(f"{cfg.train}: too few utterances for {world} worker(s) at --batch-seconds {cfg.batch_seconds}")
    total = cfg.max_steps or cfg.epochs * batches_per_epoch
    step, epoch, best = 0, 0, float("inf")
    if resume_from:
        state = load_trainer_state(resume_from)
        opt.load_state_dict(state["optimizer"])
        step, epoch, best = state["step"], state["epoch"], state["best_wer"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total), last_epoch=step - 1)
    while step < total:
        batches = duration_batches(train_utts, cache, cfg.batch_seconds, cfg.seed + epoch, rank, world)
        t0, losses = time.perf_counter(), []
        for idx in batches:
            if step >= total:
                break
            batch = collate(train_utts, idx, cache, m.tokenizer)
            loss = training_loss(net, batch, cfg, core=m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            should_fail(step)
        epoch += 1
        metrics = {"epoch": epoch, "step": step, "train_utterances": len(train_utts), "train_loss": sum(losses) / max(1, len(losses)),
                   "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm), "epoch_s": time.perf_counter() - t0}
        ckpt = None
        if rank == 0:
            if val_utts:
                metrics.update({f"val_{k}": v for k, v in evaluate(m, val_utts, cache, cfg.eval_batch_size).items()})
            wer = metrics.get("val_wer", metrics["train_loss"])
            metrics["best"] = wer < best
            best = min(best, wer)
            ckpt = os.path.join(work, f"epoch-{epoch:04d}")
            save_checkpoint(m, ckpt, {"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "best_wer": best})
        report(metrics, ckpt)
        if ckpt:  # persisted by the reporter (Ray Train's storage, or OUTPUT/last): no local copy piles up
            shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return m


def local_reporter(output: str, storage_options: dict[str, Any] | None = None) -> Callable[[dict, str | None], None]:
    """Single-process reporting: print, append OUTPUT/metrics.jsonl, copy OUTPUT/last and OUTPUT/best."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)

    def report(metrics: dict[str, Any], ckpt: str | None) -> None:
        print(json.dumps(metrics), flush=True)
        with fs.open(f"{root}/metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if ckpt:
            for name in ("last",) + (("best",) if metrics.get("best") else ()):
                if fs.exists(f"{root}/{name}"):
                    fs.rm(f"{root}/{name}", recursive=True)
                fs.put(ckpt.rstrip("/") + "/", f"{root}/{name}/", recursive=True)

    return report
