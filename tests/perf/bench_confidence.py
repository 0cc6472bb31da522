"""Decoding time with and without confidence scores (a benchmark, not a test).

    python tests/perf/bench_confidence.py [--preset parakeet-tdt-0.6b-v3] [--batch-sizes 1,4,16] [--repeats 5]

The encoder runs once per batch size; greedy_tdt is then timed on the same encoder output with
confidence off, with NeMo's default (entropy / tsallis / exp, blanks excluded) and with the most
expensive setting (blanks included and TDT duration confidence). Random preset weights, the blank bias
calibrated to ~0.4 tokens per frame as a trained model emits (jobs/bench.py); best of --repeats.
"""
from __future__ import annotations

import argparse
import time

import torch

from jobs.bench import _realistic_emissions, synthetic_audio
from model.confidence import ConfidenceConfig
from model.config import preset
from model.decoding import greedy_tdt
from model.parakeet import ParakeetTDT

SETTINGS = {
    "off": None,
    "default": ConfidenceConfig(),
    "blanks+duration": ConfidenceConfig(exclude_blank=False, tdt_include_duration=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="parakeet-tdt-0.6b-v3")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    torch.manual_seed(0)
    m = ParakeetTDT(preset(args.preset), None).eval()
    _realistic_emissions(m)
    m = m.to({"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision])
    c = m.config
    print(f"{args.preset} ({args.precision}), {args.seconds:g} s clips, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'batch':>5} " + " ".join(f"{k + ' s':>17}" for k in SETTINGS) + f" {'default / off':>14} {'blanks+dur / off':>17}")
    with torch.inference_mode():
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            audio = torch.stack([torch.from_numpy(synthetic_audio(args.seconds, seed=i)) for i in range(b)])
            enc, elen = m.encode(audio, torch.full((b,), audio.shape[1]))
            best = {}
            for name, conf in SETTINGS.items():
                run = lambda: greedy_tdt(enc, elen, m.predictor, m.joint, c.blank_id, c.durations,  # noqa: E731
                                         c.max_symbols_per_step, confidence=conf)
                hyps = run()  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                best[name] = min(times)
                if conf is not None:
                    assert all(len(h.token_confidence) == len(h.token_ids) for h in hyps)
            print(f"{b:>5} " + " ".join(f"{best[k]:>17.3f}" for k in SETTINGS)
                  + f" {best['default'] / best['off']:>13.3f}x {best['blanks+duration'] / best['off']:>16.3f}x")


if __name__ == "__main__":
    main()
