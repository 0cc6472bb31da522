"""Ray Train overhead: step time of `parakeet-ray finetune` (1 worker, Ray Train) against the same loop in
a plain process, on the same batches (same manifest, seed, model and config), in the same run.

    python tests/perf/bench_train_overhead.py MANIFEST [--batch-seconds 60]

Both run two epochs over MANIFEST and time the second (the first decodes and caches the audio), so
Ray's start-up is excluded and the figure is the per-step cost of running inside a Ray Train worker.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from jobs import finetune  # noqa: E402
from jobs.train_loop import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="overhead-")
    arch = {"encoder": {"n_layers": 4, "d_model": 128, "n_heads": 4, "subsampling_conv_channels": 64}, "predictor": {"pred_hidden": 128},
            "joint": {"joint_hidden": 128}}  # the demo model's shape
    base = dict(train=args.manifest, preset="tiny", vocab_size=128, batch_seconds=args.batch_seconds,
                warmup_steps=5, spec_augment=None, overrides=arch)
    torch.set_num_threads(2)
    epochs = []
    # a plain process: epoch 1 warms the audio cache, epoch 2 is timed
    train(TrainConfig(output=f"{out}/plain", epochs=2, **base), lambda m, c: epochs.append(m))
    plain = epochs[-1]["epoch_s"] / (epochs[-1]["step"] - epochs[-2]["step"])
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    finetune.run(TrainConfig(output=f"{out}/ray", epochs=2, **base), workers=1, cpus_per_worker=2)  # same 2 threads
    rows = [json.loads(line) for line in open(f"{out}/ray/epochs.jsonl")]
    ray_step = rows[-1]["epoch_s"] / (rows[-1]["step"] - rows[-2]["step"])
    print(f"plain loop: {plain:.3f} s/step; Ray Train (1 worker): {ray_step:.3f} s/step; overhead {100 * (ray_step / plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
