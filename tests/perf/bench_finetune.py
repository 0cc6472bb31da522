"""Fine-tuning ingest at growing corpus sizes: is worker memory bounded, and is the ingest hidden?

    python tests/perf/bench_finetune.py [--base-hours 0.625] [--scales 1,4,16]
    (run it as the CLI runs: LD_PRELOAD=$(python -c "from jobs.allocator import find_tcmalloc; print(find_tcmalloc())"))

The corpus is made of hard links to the espeak clips in tests/data/audio (no disk growth): the 1x set has
`--base-hours` of audio, the largest `--base-hours * 16` (10 h by default). For each scale, one epoch of
`finetune.run` (1 Ray Train worker, the demo-sized model from scratch) runs on a local Ray, and prints:
  (a) the worker's peak private RSS (RssAnon, sampled at every micro-batch and step through finetune.run's
      callback) per scale, and the ratio to the 1x figure (goal: 16x <= 1.15x); also the object-store pages
      the worker has mapped (Ray's shared arena: bounded by --object-store-gb, not by the corpus) and ru_maxrss;
  (b) the mean step time with streaming ingest against the same loop on batches already in memory (same
      model, same batches: the in-memory run replays the micro-batches the streaming run trained, in order,
      in a plain process with the same thread count) (goal: <= 1.10x);
  (c) throughput, audio seconds trained per second.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jobs import finetune  # noqa: E402
from pipeline.training.config import TrainConfig  # noqa: E402

ARCH = {"encoder": {"n_layers": 4, "d_model": 128, "n_heads": 4, "subsampling_conv_channels": 64},
        "predictor": {"pred_hidden": 128}, "joint": {"joint_hidden": 128}}  # the demo model's shape


def _status_mb(*keys: str) -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0]) / 1024
    return out


class Probe:
    """Runs on the worker, at every micro-batch and optimizer step: the process's private memory (RssAnon:
    what the worker itself holds), its mapped object-store pages (RssShmem: Ray's shared memory, counted in
    RSS once touched), ru_maxrss, a timestamp, and the micro-batch's uids."""

    def __init__(self, path):
        self.path = path

    def __call__(self, event):
        mem = _status_mb("RssAnon", "RssShmem")
        row = {"event": event["event"], "step": event["step"], "t": time.perf_counter(), "anon_mb": mem["RssAnon"],
               "shmem_mb": mem["RssShmem"], "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if event["event"] == "batch":
            row["uids"] = event["uids"]
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def make_corpus(folder: Path, hours: float) -> tuple[str, float]:
    rows = [json.loads(line) for line in (ROOT / "tests/data/audio/manifest.jsonl").read_text().splitlines()]
    clips = [(ROOT / "tests/data/audio" / r["audio"], r["text"], sf.info(ROOT / "tests/data/audio" / r["audio"]).duration)
             for r in rows]
    folder.mkdir(parents=True)
    lines, seconds, i = [], 0.0, 0
    while seconds < hours * 3600:
        src, text, dur = clips[i % len(clips)]
        dst = folder / f"clip{i:06d}{src.suffix}"
        os.link(src, dst)
        lines.append(json.dumps({"audio_uri": str(dst), "text": text}))  # no duration_s: headers are probed
        seconds += dur
        i += 1
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest), seconds


def replay_in_memory(cfg: TrainConfig, out: Path, batches: list[list[int]], threads: int) -> list[float]:
    """The same loop body on the streaming run's micro-batches, decoded beforehand: step times (s)."""
    import model
    from pipeline.training.ingest import MicroBatch, collate, prepare_batch
    from pipeline.training.loop import TrainForward, train_mode, training_loss
    from pipeline.training.plan import iter_manifest, manifest_files

    torch.set_num_threads(threads)
    rows = [r for f in manifest_files(cfg.train) for t in iter_manifest(f) for r in t.to_pylist()]
    m = model.load(out / "_plan_model")
    train_mode(m, cfg)
    net = TrainForward(m, cfg)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    decoded = {}
    for uids in batches:
        todo = [u for u in uids if u not in decoded]
        if todo:
            b = prepare_batch({"uid": np.array(todo), "audio_uri": np.array([rows[u]["audio_uri"] for u in todo], dtype=object),
                               "text": np.array([rows[u]["text"] for u in todo], dtype=object)}, {}, m.tokenizer.data)
            decoded.update({int(u): (a, t) for u, a, t in zip(b["uid"], b["audio"], b["tokens"])})
    ready = [collate(MicroBatch(u, [decoded[i][0] for i in u], [decoded[i][1] for i in u]), m.config.blank_id) for u in batches]
    times = []
    for batch in ready:
        t0 = time.perf_counter()
        loss = training_loss(net, m, batch, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-hours", type=float, default=0.625)
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker (the rest decode)")
    ap.add_argument("--object-store-gb", type=float, default=None,
                    help="Ray's object store size (its shared-memory arena; default Ray's: 30%% of RAM)")
    ap.add_argument("--trace", action="store_true", help="also print the worker's memory every 1/16 of each run")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=os.cpu_count() + 1, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.object_store_gb * 1024**3) if args.object_store_gb else None)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    results = {}
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            manifest, seconds = make_corpus(work / f"x{scale}", args.base_hours * scale)
            out = work / f"out{scale}"
            probe = Probe(str(work / f"probe{scale}.jsonl"))
            cfg = TrainConfig(train=manifest, output=str(out), preset="tiny", vocab_size=128, overrides=ARCH, epochs=1,
                              batch_seconds=args.batch_seconds, lr=1e-3, warmup_steps=10, checkpoint_every=None, log_every=50,
                              spec_augment=None)
            t0 = time.perf_counter()
            assert finetune.run(cfg, workers=1, cpus_per_worker=args.threads, callback=probe) == 0
            wall = time.perf_counter() - t0
            events = [json.loads(line) for line in Path(probe.path).read_text().splitlines()]
            steps = [e for e in events if e["event"] == "step"]
            step_times = np.diff([e["t"] for e in steps])
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            results[scale] = {"audio_h": seconds / 3600, "steps": len(steps), "peak_anon_mb": max(e["anon_mb"] for e in events),
                              "peak_shmem_mb": max(e["shmem_mb"] for e in events), "maxrss_mb": max(e["maxrss_mb"] for e in events),
                              "wall_s": wall,
                              "step_s": float(np.mean(step_times[len(step_times) // 10:])),
                              "audio_s_per_s": seconds / (steps[-1]["t"] - steps[0]["t"]) * (len(steps) - 1) / len(steps),
                              "data_wait": float(np.mean([m["data_wait"] for m in metrics if m["event"] in ("step", "epoch")]))}
            print(f"{scale:>3}x: {seconds / 3600:.2f} h, {len(steps)} steps, worker peak private RSS {results[scale]['peak_anon_mb']:.0f} MB "
                  f"(object-store pages mapped {results[scale]['peak_shmem_mb']:.0f} MB, ru_maxrss {results[scale]['maxrss_mb']:.0f} MB), "
                  f"step {results[scale]['step_s']:.3f} s, {results[scale]['audio_s_per_s']:.0f} audio-s/s, wall {wall:.0f} s", flush=True)
            if args.trace:
                for e in steps[:: max(1, len(steps) // 16)]:
                    print(f"      step {e['step']:>5}: private {e['anon_mb']:.0f} MB, object-store pages {e['shmem_mb']:.0f} MB")
            if scale == int(args.scales.split(",")[0]):  # (b) on the smallest scale: replay its batches in memory
                shutil.copytree(out / "last", out / "_plan_model")  # same architecture and tokenizer (weights: same cost)
                batches = [e["uids"] for e in events if e["event"] == "batch"]
                mem = replay_in_memory(cfg, out, batches, args.threads)
                results["in_memory_step_s"] = float(np.mean(mem[len(mem) // 10:]))
            shutil.rmtree(work / f"x{scale}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scales = [k for k in results if isinstance(k, int)]
    base = results[scales[0]]
    print("\n(a) peak worker private RSS, MB: " + ", ".join(
        f"{s}x {results[s]['peak_anon_mb']:.0f} ({results[s]['peak_anon_mb'] / base['peak_anon_mb']:.3f}x)" for s in scales)
        + "   goal: 16x <= 1.15x")
    print("    ru_maxrss (includes the object-store pages the worker has touched), MB: " + ", ".join(
        f"{s}x {results[s]['maxrss_mb']:.0f} ({results[s]['maxrss_mb'] / base['maxrss_mb']:.3f}x)" for s in scales))
    print(f"(b) step time, streaming {base['step_s']:.3f} s vs in memory {results['in_memory_step_s']:.3f} s: "
          f"{base['step_s'] / results['in_memory_step_s']:.3f}x   goal: <= 1.10x (data wait {base['data_wait']:.1%})")
    print("(c) throughput, audio-s trained per s: " + ", ".join(f"{s}x {results[s]['audio_s_per_s']:.0f}" for s in scales))
    print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
