"""Train the bundled demo model (model/pretrained/parakeet-tdt-demo) on the synthetic corpus.

    python examples/make_demo_corpus.py /tmp/demo_corpus
    python examples/train_demo_model.py /tmp/demo_corpus /tmp/demo_out --max-steps 360
    cp -r /tmp/demo_out/best model/pretrained/parakeet-tdt-demo

One Ray Train worker on a local Ray, through the same `finetune.run` the CLI calls.
"""
import argparse
import time

from jobs import finetune
from pipeline.training.config import TrainConfig
from pipeline.training.spec_augment import SpecAugmentConfig

DEMO_ARCH = {  # a few MB: 4 x 128 FastConformer, 80 mels, 128-wide prediction net and joint
    "encoder": {"n_layers": 4, "d_model": 128, "n_heads": 4, "subsampling_conv_channels": 64, "ff_expansion_factor": 4, "dropout": 0.1},
    "predictor": {"pred_hidden": 128},
    "joint": {"joint_hidden": 128},
}

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("corpus")
ap.add_argument("output")
ap.add_argument("--max-steps", type=int, default=360)
ap.add_argument("--batch-seconds", type=float, default=90.0)
ap.add_argument("--lr", type=float, default=2e-3)
args = ap.parse_args()
cfg = TrainConfig(
    train=f"{args.corpus}/train.jsonl", val=f"{args.corpus}/val.jsonl", output=args.output, preset="tiny",
    vocab_size=128, max_steps=args.max_steps, batch_seconds=args.batch_seconds, lr=args.lr, warmup_steps=40,
    spec_augment=SpecAugmentConfig(freq_masks=2, freq_width=15, time_masks=2, time_width=0.05), overrides=DEMO_ARCH,
    val_every=60, checkpoint_every=60,
)
t0 = time.time()
finetune.run(cfg, workers=1, cpus_per_worker=2)
print(f"training wall time {time.time() - t0:.0f} s")
