"""Benchmark: TDT loss forward+backward time and peak memory, ours vs transformers' tdt_loss, same run.

    python tests/perf/bench_loss.py [--shapes 4x200x60x1025,8x400x100x1025,4x200x40x8193] [--skip-reference]
                                    [--repeats 3] [--json out.json]

Columns: best-of-N wall time of forward+backward for ours and for transformers' `tdt_loss`; the
"floor": the memory traffic any logits-in implementation must do on this machine, i.e. one fused
log_softmax pass over the token logits (to normalise) plus writing a freshly allocated softmax-sized
gradient tensor (timed the same way); and the fused-joint path (`tdt_joint_loss`, from the joint's
hidden activations, never materialising the logits) next to logits = joint(...) + ours.

Peak memory is the largest increase of the process's resident set over its level with the inputs
allocated, sampled every 5 ms from /proc/self/statm by a thread (CPU), minus the gradient tensors
themselves (part of any implementation's output). Reported relative to the size of the logits
(token + duration, float32).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from pipeline.training.loss import SLAB_BYTES, tdt_loss  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
DURATIONS = [0, 1, 2, 3, 4]


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


def inputs(b, t, u, v):
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(b, t, u + 1, v, generator=g)
    dur = torch.randn(b, t, u + 1, len(DURATIONS), generator=g)
    targets = torch.randint(0, v - 1, (b, u), generator=g)
    return tok, dur, targets, torch.full((b,), t), torch.full((b,), u)


def run(fn, shape, repeats):
    """Best-of-`repeats` fwd+bwd seconds, peak extra memory / logits size, loss value."""
    tok, dur, targets, t_len, u_len = inputs(*shape)
    logits_bytes = (tok.numel() + dur.numel()) * 4
    best, mem = float("inf"), 0.0
    for _ in range(repeats):
        a, d = tok.detach().requires_grad_(), dur.detach().requires_grad_()
        gc.collect()
        with PeakRSS() as m:
            t0 = time.perf_counter()
            loss = fn(a, d, targets, t_len, u_len, shape[3] - 1, DURATIONS, 0.0, "mean")
            loss.backward()
            elapsed = time.perf_counter() - t0
        best = min(best, elapsed)
        mem = max(mem, (m.peak - m.base - logits_bytes) / logits_bytes)
        value = loss.item()
        del a, d, loss
    return best, mem, value


def floor(shape, repeats):
    """One slab-wise fused log_softmax pass + a fresh softmax-sized gradient written slab by slab."""
    tok = inputs(*shape)[0]
    b, t, u1, v = tok.shape
    step = max(1, SLAB_BYTES // (4 * u1 * v))
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        buf = torch.empty(min(step, t), u1, v)
        for i in range(b):
            for s in range(0, t, step):
                x = tok[i, s : s + step]
                torch._log_softmax(x, -1, False, out=buf[: x.shape[0]])
        grad = torch.empty_like(tok)
        for i in range(b):
            for s in range(0, t, step):
                torch._softmax(tok[i, s : s + step], -1, False, out=grad[i, s : s + step])
        best = min(best, time.perf_counter() - t0)
        del grad
    return best


def fused(shape, repeats, hidden=640):
    """Fused joint+loss from (B, T, H) and (B, U+1, H) projections vs logits = head(relu(f + g)) + ours."""
    from pipeline.training.joint_loss import tdt_joint_loss
    b, t, u, v = shape
    g = torch.Generator().manual_seed(0)
    f = torch.randn(b, t, hidden, generator=g) * 0.5
    p = torch.randn(b, u + 1, hidden, generator=g) * 0.5
    head = torch.nn.Linear(hidden, v + len(DURATIONS))
    targets = torch.randint(0, v - 1, (b, u), generator=g)
    t_len, u_len = torch.full((b,), t), torch.full((b,), u)
    out = {}
    for name in ("materialised", "fused"):
        best, mem = float("inf"), 0.0
        for _ in range(repeats):
            fa, pa = f.detach().requires_grad_(), p.detach().requires_grad_()
            head.zero_grad(set_to_none=True)
            gc.collect()
            with PeakRSS() as m:
                t0 = time.perf_counter()
                if name == "fused":
                    loss = tdt_joint_loss(fa, pa, head.weight, head.bias, targets, t_len, u_len, v - 1, DURATIONS)
                else:
                    logits = head(torch.relu(fa[:, :, None] + pa[:, None]))
                    loss = tdt_loss(logits[..., :v], logits[..., v:], targets, t_len, u_len, v - 1, DURATIONS)
                loss.backward()
                best = min(best, time.perf_counter() - t0)
            mem = max(mem, (m.peak - m.base) / 2**20)
            del loss, fa, pa
            if name == "materialised":
                del logits
        out[name] = (best, mem)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4x200x60x1025,8x400x100x1025,4x200x40x8193")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-fused", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        from transformers.loss.loss_tdt import tdt_loss as ref
    except ImportError:
        ref = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    print(f"{'B x T x U x V':>16} {'ours s':>7} {'ref s':>7} {'speedup':>8} {'floor s':>8} {'ours/floor':>10} "
          f"{'ours mem':>9} {'ref mem':>8} {'|dloss|':>8}")
    rows = []
    for spec in args.shapes.split(","):
        shape = tuple(int(x) for x in spec.split("x"))
        ours_s, ours_m, ours_l = run(tdt_loss, shape, args.repeats)
        fl = floor(shape, args.repeats)
        row = {"shape": spec, "ours_s": ours_s, "ours_mem_x_logits": ours_m, "floor_s": fl}
        if ref is not None and not args.skip_reference:
            ref_s, ref_m, ref_l = run(ref, shape, max(1, args.repeats - 1))
            row.update(ref_s=ref_s, ref_mem_x_logits=ref_m, speedup=ref_s / ours_s, abs_loss_diff=abs(ours_l - ref_l))
            print(f"{spec:>16} {ours_s:>7.3f} {ref_s:>7.2f} {ref_s / ours_s:>7.1f}x {fl:>8.3f} {ours_s / fl:>9.2f}x "
                  f"{ours_m:>8.2f}x {ref_m:>7.2f}x {abs(ours_l - ref_l):>8.1e}")
        else:
            print(f"{spec:>16} {ours_s:>7.3f} {'-':>7} {'-':>8} {fl:>8.3f} {ours_s / fl:>9.2f}x {ours_m:>8.2f}x")
        rows.append(row)
    if not args.skip_fused:
        print(f"\nfused joint+loss (H=640) vs logits = joint(...) then tdt_loss; fwd+bwd incl. the head matmuls")
        print(f"{'B x T x U x V':>16} {'materialised s':>15} {'fused s':>8} {'materialised MiB':>17} {'fused MiB':>10}")
        for row in rows:
            shape = tuple(int(x) for x in row["shape"].split("x"))
            r = fused(shape, args.repeats)
            row.update(materialised_s=r["materialised"][0], materialised_mib=r["materialised"][1],
                       fused_s=r["fused"][0], fused_mib=r["fused"][1])
            print(f"{row['shape']:>16} {r['materialised'][0]:>15.3f} {r['fused'][0]:>8.3f} "
                  f"{r['materialised'][1]:>17.0f} {r['fused'][1]:>10.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
