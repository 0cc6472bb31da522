"""Benchmark: TDT loss forward+backward time and peak memory, ours vs transformers' tdt_loss, same run.

    python tests/perf/bench_loss.py [--shapes 4x200x60x1025,8x400x100x1025,4x200x40x8193] [--skip-reference]

Peak memory is the largest increase of the process's resident set over its level with the logits
allocated, sampled every 5 ms from /proc/self/statm by a thread (CPU). Reported relative to the size
of the logits (token + duration, float32).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from model.loss import tdt_loss  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    def __enter__(self):
        self.base, self.peak, self.stop = rss(), rss(), False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, rss())


def run(fn, b, t, u, v, durations):
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(b, t, u + 1, v, generator=g).requires_grad_()
    dur = torch.randn(b, t, u + 1, len(durations), generator=g).requires_grad_()
    targets = torch.randint(0, v - 1, (b, u), generator=g)
    t_len, u_len = torch.full((b,), t), torch.full((b,), u)
    logits_bytes = (tok.numel() + dur.numel()) * 4
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        loss = fn(tok, dur, targets, t_len, u_len, v - 1, durations, 0.0, "mean")
        loss.backward()
        elapsed = time.perf_counter() - t0
    grads_bytes = logits_bytes  # the gradients themselves are part of any implementation's output
    return elapsed, (mem.peak - mem.base - grads_bytes) / logits_bytes, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4x200x60x1025,8x400x100x1025,4x200x40x8193")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    durations = [0, 1, 2, 3, 4]
    try:
        from transformers.loss.loss_tdt import tdt_loss as ref
    except ImportError:
        ref = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    print(f"{'B x T x U x V':>18} {'ours s':>8} {'ref s':>8} {'speedup':>8} {'ours mem/logits':>16} {'ref mem/logits':>15} {'|dloss|':>9}")
    for shape in args.shapes.split(","):
        b, t, u, v = (int(x) for x in shape.split("x"))
        ours_s, ours_m, ours_l = run(tdt_loss, b, t, u, v, durations)
        if ref is not None and not args.skip_reference:
            ref_s, ref_m, ref_l = run(ref, b, t, u, v, durations)
            print(f"{shape:>18} {ours_s:>8.2f} {ref_s:>8.2f} {ref_s / ours_s:>7.1f}x {ours_m:>15.2f}x {ref_m:>14.2f}x {abs(ours_l - ref_l):>9.1e}")
        else:
            print(f"{shape:>18} {ours_s:>8.2f} {'-':>8} {'-':>8} {ours_m:>15.2f}x {'-':>15} {'-':>9}")


if __name__ == "__main__":
    main()
