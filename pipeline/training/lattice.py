"""Transducer lattice: forward/backward variables and arc occupancies from arc log-weights.

One lattice serves both the TDT loss and the standard RNN-T loss. From state (t, u) there is, for each
duration index i (duration d = durations[i]):
  - a blank arc to (t + d, u) with log-weight wb[t, u, i] (only for d > 0), and
  - a label arc to (t + d, u + 1) with log-weight wl[t, u, i] (d = 0 allowed: within the row),
and a path ends with a blank arc from (t, U) with t + d == T. Label arcs never land on or past T.
TDT: wb = log p(blank) - sigma + log p(d), wl = log p(y_u+1) - sigma + log p(d) (Xu et al. 2023, eq. 7).
RNN-T: durations (0, 1), blank arcs only with d = 1, label arcs only with d = 0 (the other weight -inf).

`lattice(wb, wl, durations, t_len, u_len, occupancy)` returns log p(y | x) per sample and, if asked,
each arc's occupancy exp(alpha + w + beta - log p), which is minus the gradient of -log p with respect
to that arc's log-weight. Everything is float64. Infeasible samples (no path) get log p = -inf and zero
occupancies.

On CPU a numba kernel walks each sample's lattice state by state (parallel over the batch): O(T U D)
scalar work and no temporaries beyond alpha and beta. On other devices a vectorised PyTorch version
walks time rows (vectorised over batch and u; zero-duration label chains within a row are solved in
closed form with a log-cumulative-sum). Both are tested against each other and against transformers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numba
import numpy as np
import torch

NEG_INF = float("-inf")
MIN_LOGP = -1e4  # floor for a zero-duration label weight inside the cumulative sums (exp(-1e4) == 0)


def lattice(wb: torch.Tensor, wl: torch.Tensor, durations: Sequence[int], t_len: torch.Tensor,
            u_len: torch.Tensor, occupancy: bool = True):
    """wb, wl (B, T, U+1, D) float64 -> (logp (B,), occ_b, occ_l (B, T, U+1, D) or None)."""
    if wb.shape != wl.shape or wb.shape[-1] != len(durations):
        raise ValueError(f"arc weights {tuple(wb.shape)} / {tuple(wl.shape)} do not match {len(durations)} durations")
    if wb.device.type == "cpu":
        return _lattice_cpu(wb, wl, durations, t_len, u_len, occupancy)
    return _lattice_torch(wb, wl, durations, t_len, u_len, occupancy)


# ---------------------------------------------------------------------------------------------- CPU


def _lattice_cpu(wb, wl, durations, t_len, u_len, occupancy):
    b = wb.shape[0]
    wb_np = wb.detach().to(torch.float64).contiguous().numpy()
    wl_np = wl.detach().to(torch.float64).contiguous().numpy()
    logp = np.empty(b, dtype=np.float64)
    occ_b = np.zeros(wb_np.shape if occupancy else (0, 0, 0, 0), dtype=np.float64)
    occ_l = np.zeros_like(occ_b)
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
    _kernel(wb_np, wl_np, np.asarray(durations, dtype=np.int64), t_len.cpu().numpy().astype(np.int64),
            u_len.cpu().numpy().astype(np.int64), occupancy, logp, occ_b, occ_l)
    if not occupancy:
        return torch.from_numpy(logp), None, None
    return torch.from_numpy(logp), torch.from_numpy(occ_b), torch.from_numpy(occ_l)


@numba.njit(cache=True, inline="always")
def _lse(cand, n):
    m = -np.inf
    for k in range(n):
        if cand[k] > m:
            m = cand[k]
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for k in range(n):
        s += math.exp(cand[k] - m)
    return m + math.log(s)


@numba.njit(parallel=True, cache=True)
def _kernel(wb, wl, durations, t_len, u_len, occupancy, logp, occ_b, occ_l):
    n_b, _, _, n_d = wb.shape
    for b in numba.prange(n_b):
        t_n, u_n = t_len[b], u_len[b]
        cand = np.empty(2 * n_d)
        if t_n <= 0:
            logp[b] = -np.inf
            continue
        beta = np.full((t_n, u_n + 1), -np.inf)
        for t in range(t_n - 1, -1, -1):
            for u in range(u_n, -1, -1):
                n = 0
                for i in range(n_d):
                    d = durations[i]
                    if d > 0:
                        if t + d < t_n:
                            cand[n] = wb[b, t, u, i] + beta[t + d, u]
                            n += 1
                        elif t + d == t_n and u == u_n:  # terminal blank
                            cand[n] = wb[b, t, u, i]
                            n += 1
                    if u < u_n and t + d < t_n:  # d == 0 reads beta[t, u + 1], already done
                        cand[n] = wl[b, t, u, i] + beta[t + d, u + 1]
                        n += 1
                beta[t, u] = _lse(cand, n)
        lp = beta[0, 0]
        logp[b] = lp
        if not occupancy or lp == -np.inf:
            continue
        alpha = np.full((t_n, u_n + 1), -np.inf)
        for t in range(t_n):
            for u in range(u_n + 1):
                if t == 0 and u == 0:
                    alpha[0, 0] = 0.0
                    continue
                n = 0
                for i in range(n_d):
                    s = t - durations[i]
                    if s < 0:
                        continue
                    if durations[i] > 0:
                        cand[n] = alpha[s, u] + wb[b, s, u, i]
                        n += 1
                    if u > 0:  # d == 0 reads alpha[t, u - 1], already done
                        cand[n] = alpha[s, u - 1] + wl[b, s, u - 1, i]
                        n += 1
                alpha[t, u] = _lse(cand, n)
        for t in range(t_n):
            for u in range(u_n + 1):
                a = alpha[t, u] - lp
                if a == -np.inf:
                    continue
                for i in range(n_d):
                    d = durations[i]
                    if d > 0:
                        if t + d < t_n:
                            occ_b[b, t, u, i] = math.exp(a + wb[b, t, u, i] + beta[t + d, u])
                        elif t + d == t_n and u == u_n:
                            occ_b[b, t, u, i] = math.exp(a + wb[b, t, u, i])
                    if u < u_n and t + d < t_n:
                        occ_l[b, t, u, i] = math.exp(a + wl[b, t, u, i] + beta[t + d, u + 1])


# ------------------------------------------------------------------------------------ other devices


def _lattice_torch(wb, wl, durations, t_len, u_len, occupancy):
    t_len, u_len = t_len.to(wb.device).long(), u_len.to(wb.device).long()
    beta = _beta(wb, wl, durations, t_len, u_len)
    logp = beta[:, 0, 0]
    if not occupancy:
        return logp, None, None
    alpha = _alpha(wb, wl, durations)
    feasible = torch.isfinite(logp)
    b, t_max, u1, _ = wb.shape
    base = alpha - torch.where(feasible, logp, torch.zeros_like(logp))[:, None, None]  # (B, T, U+1)
    occ_b, occ_l = torch.zeros_like(wb), torch.zeros_like(wl)
    is_final_u = torch.arange(u1, device=wb.device)[None, None, :] == u_len[:, None, None]
    t_idx = torch.arange(t_max, device=wb.device)
    for i, d in enumerate(durations):
        nxt = beta[:, d : d + t_max]  # (B, T, U+1) beta[t + d, u]
        if d > 0:
            lands = ((t_idx[None, :] + d) == t_len[:, None])[:, :, None] & is_final_u
            occ_b[..., i] = torch.exp(base + wb[..., i] + torch.where(lands, torch.zeros_like(nxt), nxt))
        nxt_label = torch.full_like(nxt, NEG_INF)
        nxt_label[:, :, :-1] = nxt[:, :, 1:]
        occ_l[..., i] = torch.exp(base + wl[..., i] + nxt_label)
    keep = feasible[:, None, None, None]
    return logp, torch.nan_to_num(occ_b * keep, nan=0.0), torch.nan_to_num(occ_l * keep, nan=0.0)


def _alpha(wb, wl, durations):
    """Forward variables (B, T, U+1): alpha[t, u] = log prob of reaching state (t, u)."""
    b, t_max, u1, _ = wb.shape
    alpha = torch.full((b, t_max, u1), NEG_INF, dtype=torch.float64, device=wb.device)
    zero = durations.index(0) if 0 in durations else None
    for t in range(t_max):
        cands = [torch.full((b, u1), NEG_INF, dtype=torch.float64, device=wb.device)]
        if t == 0:
            cands[0][:, 0] = 0.0
        for i, d in enumerate(durations):
            if d == 0 or t - d < 0:
                continue
            prev = alpha[:, t - d]  # (B, U+1)
            cands.append(prev + wb[:, t - d, :, i])
            lab = torch.full_like(prev, NEG_INF)
            lab[:, 1:] = prev[:, :-1] + wl[:, t - d, :-1, i]
            cands.append(lab)
        a = torch.logsumexp(torch.stack(cands), dim=0)  # arrivals from earlier rows
        if zero is not None and u1 > 1:  # chain of zero-duration labels inside row t
            c = _row_cumsum(wl[:, t, :, zero])
            a = c + torch.logcumsumexp(a - c, dim=-1)
        alpha[:, t] = a
    return alpha


def _row_cumsum(w0: torch.Tensor) -> torch.Tensor:
    """C[u] = sum_{j < u} w0[j] for (B, U+1) zero-duration label weights (C[0] = 0)."""
    c = torch.zeros_like(w0)
    c[:, 1:] = torch.cumsum(w0[:, :-1].clamp(min=MIN_LOGP), dim=-1)
    return c


def _beta(wb, wl, durations, t_len, u_len):
    """Backward variables (B, T + max d + 1, U+1): log prob of finishing from (t, u); -inf outside."""
    b, t_max, u1, _ = wb.shape
    dev = wb.device
    beta = torch.full((b, t_max + max(durations) + 1, u1), NEG_INF, dtype=torch.float64, device=dev)
    u_idx = torch.arange(u1, device=dev)
    valid_u = u_idx[None, :] <= u_len[:, None]  # (B, U+1)
    is_final_u = u_idx[None, :] == u_len[:, None]
    zero = durations.index(0) if 0 in durations else None
    for t in range(t_max - 1, -1, -1):
        cands = [torch.full((b, u1), NEG_INF, dtype=torch.float64, device=dev)]
        for i, d in enumerate(durations):
            if d == 0:
                continue
            nxt = beta[:, t + d]  # (B, U+1); -inf at and beyond each sample's T
            lands = (t + d == t_len)[:, None] & is_final_u  # terminal blank arc
            cands.append(torch.where(lands, wb[:, t, :, i], wb[:, t, :, i] + nxt))
            lab = torch.full_like(nxt, NEG_INF)
            lab[:, :-1] = wl[:, t, :-1, i] + nxt[:, 1:]
            cands.append(lab)
        bp = torch.logsumexp(torch.stack(cands), dim=0)
        bp = torch.where(valid_u & (t < t_len)[:, None], bp, torch.full_like(bp, NEG_INF))
        if zero is not None and u1 > 1:  # beta[t,u] = lse(bp[t,u], w0[t,u] + beta[t,u+1]), solved as a reverse scan
            c = _row_cumsum(wl[:, t, :, zero])
            bp = torch.flip(torch.logcumsumexp(torch.flip(bp + c, [-1]), dim=-1), [-1]) - c
            bp = torch.where(valid_u & (t < t_len)[:, None], bp, torch.full_like(bp, NEG_INF))
        beta[:, t] = bp
    return beta
