"""`parakeet-ray bench`: measured throughput of our model, split into features / encoder / decoding,
plus peak memory on long audio with limited-context attention. Prints a table and writes JSON.

Side-by-side numbers against NeMo and transformers live in tests/perf/compare_references.py
(the product never imports the references).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure transcription throughput (RTFx) and long-audio memory",
                              description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="checkpoint to measure (folder, .nemo, URI, hub id)")
    src.add_argument("--preset", default="parakeet-tdt-0.6b-v3",
                     help="random weights of a preset shape (same compute as trained weights); default parakeet-tdt-0.6b-v3")
    p.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per batch size, after one warm-up (default 2)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="weights and compute (features stay fp32); bf16 uses AVX512-BF16/AMX where the CPU has them")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--long-minutes", default="", help="comma-separated minutes of audio for the peak-memory runs, e.g. 10,60")
    p.add_argument("--long-context", type=int, default=128, help="limited-context attention frames each side for long audio")
    p.add_argument("--long-mode", choices=("one-piece", "library"), default="one-piece",
                   help="one-piece: encode + decode the whole input with limited-context attention; library: "
                        "model.transcribe([input]) with its defaults (chunks at pauses, full attention)")
    p.add_argument("--json", default=None, help="write the results here (default: bench.json in the current folder)")
    p.set_defaults(func=run_command)


def _load(args):
    import torch

    import model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    if args.model:
        return model.load(args.model, dtype=dtype), args.model
    from model.config import preset

    cfg = preset(args.preset)
    torch.manual_seed(0)
    m = model.ParakeetTDT(cfg, None).eval()
    _realistic_emissions(m)
    return m.to(dtype), f"{args.preset} (random weights)"


def _realistic_emissions(m, target_tokens_per_frame: float = 0.4) -> None:
    """Random joints emit a token at nearly every step (or never), which no trained model does.
    Calibrate the blank logit's bias by bisection on a short synthetic clip so the decoder emits about
    `target_tokens_per_frame` (trained Parakeet: ~0.3-0.5 tokens per 80 ms frame), with durations
    shifted towards 1-2 frames. The table reports the resulting tokens per audio second."""
    import torch

    from model.decoding import greedy_tdt

    cfg, blank = m.config, m.config.blank_id
    x = torch.from_numpy(synthetic_audio(5.0, seed=99))[None]
    with torch.inference_mode():
        enc, elen = m.encode(x, torch.tensor([x.shape[1]]))
        n = len(cfg.durations)
        m.joint.head.bias[blank + 1 :] += torch.tensor(([-4.0, 2.0, 1.0, 0.0, -1.0] + [-1.0] * n)[:n])
        base = m.joint.head.bias[blank].item()
        lo, hi = -20.0, 20.0
        for _ in range(12):
            mid = (lo + hi) / 2
            m.joint.head.bias[blank] = base + mid
            h = greedy_tdt(enc, elen, m.predictor, m.joint, blank, cfg.durations, cfg.max_symbols_per_step)[0]
            rate = len(h.token_ids) / max(int(elen[0]), 1)
            lo, hi = (mid, hi) if rate > target_tokens_per_frame else (lo, mid)


def synthetic_audio(seconds: float, seed: int):
    """Deterministic speech-band audio (harmonic tones with a moving pitch, bursts of noise)."""
    import numpy as np

    sr = 16_000
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x += 0.05 * rng.standard_normal(len(t))
    return (0.1 * x / np.abs(x).max()).astype(np.float32)


def encoder_flops(cfg, frames: int) -> float:
    """Estimated multiply-adds x2 per utterance of `frames` encoder frames (full attention)."""
    d, layers, ff = cfg.encoder.d_model, cfg.encoder.n_layers, cfg.encoder.ff_expansion_factor
    per_frame = 2 * (2 * 2 * d * d * ff) + 2 * 5 * d * d + 2 * 3 * d * d + 2 * 9 * d  # 2 FFs, q/k/v/o/pos, conv
    attn = 2 * 4 * frames * d  # scores, positional scores (2T-1 wide), weighted values
    return float(frames * layers * (per_frame + attn))


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * 2048**3 * reps / (time.perf_counter() - t0) / 1e9


def measure_batch(m, batch: int, seconds: float, repeats: int) -> dict:
    import torch

    from model.decoding import greedy_tdt

    cfg = m.config
    audio = torch.stack([torch.from_numpy(synthetic_audio(seconds, seed=i)) for i in range(batch)])
    lengths = torch.full((batch,), audio.shape[1])
    times = {"features": [], "encoder": [], "decoding": []}
    tokens = 0
    with torch.inference_mode():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            feats, flen = m.preprocessor(audio.to(m.device), lengths.to(m.device))
            t1 = time.perf_counter()
            enc, elen = m.encoder(feats.to(m.dtype), flen)
            t2 = time.perf_counter()
            hyps = greedy_tdt(enc, elen, m.predictor, m.joint, cfg.blank_id, cfg.durations, cfg.max_symbols_per_step)
            t3 = time.perf_counter()
            if r == 0:
                continue  # warm-up
            times["features"].append(t1 - t0)
            times["encoder"].append(t2 - t1)
            times["decoding"].append(t3 - t2)
            tokens = sum(len(h.token_ids) for h in hyps)
    best = {k: min(v) for k, v in times.items()}
    total = sum(best.values())
    frames = int(elen[0])
    return {
        "batch": batch, "audio_s": batch * seconds, "features_s": best["features"], "encoder_s": best["encoder"],
        "decoding_s": best["decoding"], "total_s": total, "rtfx": batch * seconds / total,
        "decoding_share": best["decoding"] / total, "tokens_per_audio_s": tokens / (batch * seconds),
        "encoder_gflops": batch * encoder_flops(cfg, frames) / best["encoder"] / 1e9,
    }


def measure_long(args, minutes: float) -> dict:
    """Peak memory of a fresh process transcribing `minutes` of audio with limited-context attention."""
    cmd = [sys.executable, "-m", "jobs.bench", "--minutes", str(minutes), "--context", str(args.long_context),
           "--precision", args.precision, "--mode", args.long_mode] + (["--model", args.model] if args.model else ["--preset", args.preset])
    # glibc in the child: it hands freed memory back (malloc_trim), so the peak is the run's own; tcmalloc
    # would keep the pages freed while loading and reuse them, hiding the working set
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        return {"minutes": minutes, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return {"minutes": minutes, "context": args.long_context, "mode": args.long_mode,
            **json.loads(proc.stdout.strip().splitlines()[-1])}


def _status_mb(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in MB; this process's by default."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def long_audio_run(args) -> dict:
    """In this process: load the model, reset the peak-RSS mark (so loading's own peak does not count),
    encode + decode `args.minutes` of audio in one piece, and report the peak over the loaded model."""
    import torch

    from model.decoding import greedy_tdt

    if args.mode == "library" and not args.model:
        m = _with_demo_tokenizer(args)
    else:
        m, _ = _load(args)
    torch.set_grad_enabled(False)
    if args.mode == "one-piece":
        m.set_attention_context((args.context, args.context))
    x = torch.from_numpy(synthetic_audio(args.minutes * 60, 0))[None]
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return what loading freed (fp32 weights before a bf16 cast)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    model_mb = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if args.mode == "library":
        tokens = len(m.transcribe([x[0]])[0].tokens)
    else:
        enc, el = m.encode(x, torch.tensor([x.shape[1]]))
        c = m.config
        tokens = len(greedy_tdt(enc, el, m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step)[0].token_ids)
    wall = time.perf_counter() - t0
    return {"peak_rss_mb": _status_mb("VmHWM"), "model_rss_mb": model_mb, "wall_s": wall, "tokens": tokens}


def _with_demo_tokenizer(args):
    """A preset's random-weight model that can produce text: the bundled demo model's tokenizer, with
    the vocabulary (and so the joint's head) sized to it. Memory and speed are the encoder's."""
    import dataclasses

    import torch

    import model
    from jobs.transcribe import DEFAULT_MODEL
    from model.config import preset

    tok = model.Tokenizer.from_folder(DEFAULT_MODEL)
    cfg = dataclasses.replace(preset(args.preset), vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    m = model.ParakeetTDT(cfg, tok).eval()
    _realistic_emissions(m)
    return m.to({"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision])


def run_command(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    m, label = _load(args)
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    params = sum(p.numel() for p in m.parameters()) / 1e6
    from jobs.allocator import current

    allocator = current()
    print(f"model: {label}, {params:.1f} M parameters, {args.precision}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, malloc: {allocator}")
    ref = matmul_gflops()
    print(f"plain torch.matmul 2048^2 on this machine: {ref:.1f} GFLOP/s")
    rows = []
    header = f"{'batch':>5} {'audio s':>8} {'feat s':>7} {'enc s':>7} {'dec s':>7} {'RTFx':>7} {'dec %':>6} {'tok/s':>6} {'enc GF/s':>8}"
    print(header)
    for b in batches:
        r = measure_batch(m, b, args.seconds, args.repeats)
        rows.append(r)
        print(f"{r['batch']:>5} {r['audio_s']:>8.0f} {r['features_s']:>7.3f} {r['encoder_s']:>7.3f} {r['decoding_s']:>7.3f} "
              f"{r['rtfx']:>7.1f} {100 * r['decoding_share']:>5.1f}% {r['tokens_per_audio_s']:>6.1f} {r['encoder_gflops']:>8.1f}")
    long_rows = []
    for mins in [float(x) for x in args.long_minutes.split(",") if x.strip()]:
        r = measure_long(args, mins)
        long_rows.append(r)
        if "error" in r:
            print(f"long audio {mins:g} min: failed: {r['error']}")
        else:
            how = "model.transcribe (chunked)" if r["mode"] == "library" else f"one piece, context ±{r['context']}"
            print(f"long audio {mins:g} min, {how}: peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(model loaded: {r['model_rss_mb']:.0f} MB), {r['wall_s']:.1f} s, {r['tokens']} tokens")
    result = {"model": label, "precision": args.precision, "allocator": allocator, "params_m": params, "threads": torch.get_num_threads(), "matmul_gflops": ref,
              "seconds_per_utterance": args.seconds, "batches": rows, "long_audio": long_rows}
    path = args.json or "bench.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # the child process of measure_long
    child = argparse.ArgumentParser()
    child.add_argument("--model", default=None)
    child.add_argument("--preset", default=None)
    child.add_argument("--precision", default="fp32")
    child.add_argument("--minutes", type=float, required=True)
    child.add_argument("--context", type=int, default=128)
    child.add_argument("--mode", choices=("one-piece", "library"), default="one-piece")
    print(json.dumps(long_audio_run(child.parse_args())))
