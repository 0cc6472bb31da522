"""TDT loss (Xu et al. 2023, "Efficient Sequence Transduction by Jointly Predicting Tokens and
Durations", eq. 7) with an analytic gradient.

Semantics equal transformers' `tdt_loss` and NeMo's `TDTLossPytorch`: token log-probs are
log_softmax(token_logits) - sigma (logit under-normalisation), durations get their own log_softmax;
from lattice state (t, u) a blank with duration d > 0 goes to (t + d, u) and label y_u with duration d
(0 allowed) goes to (t + d, u + 1); a path ends with a blank arc from (T - d, U) to T.

The forward pass computes the forward variables alpha and the backward variables beta in float64,
one time row at a time, vectorised over batch and u. Zero-duration label arcs chain states within a
row; that linear recurrence is solved in closed form with a log-cumulative-sum (`logcumsumexp`).
The backward pass needs no autograd graph over the lattice: the gradient of -log p with respect to an
arc's log-weight is minus its occupancy exp(alpha + w + beta - log p), and it flows through the two
log-softmaxes analytically. Memory: the logits (given), one gradient tensor per head (unavoidable),
and O(B T (U+1) D) float64 lattice tensors; the log-normaliser is computed in bounded chunks.

Infeasible samples (no path: e.g. T too short for the durations available) get +inf loss and a zero
gradient, so one bad utterance cannot poison a batch with NaNs; filter them with `torch.isfinite`.
"""
from __future__ import annotations

from typing import Sequence

import torch

REDUCTIONS = ("mean", "mean_batch", "mean_volume", "sum", "none")
CHUNK_ELEMENTS = 1 << 24  # bound on temporaries when normalising the token logits (64 MB in fp32)
NEG_INF = float("-inf")
MIN_LOGP = -1e4  # floor for a zero-duration label weight inside the cumulative sums (exp(-1e4) == 0)


def tdt_loss(
    token_logits: torch.Tensor,
    duration_logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
    durations: Sequence[int],
    sigma: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """token_logits (B, T, U+1, V+1), duration_logits (B, T, U+1, D), targets (B, U), lengths (B,).

    Reductions (as transformers/NeMo): "none" per-sample -log p; "sum"; "mean_batch" mean over the
    batch; "mean" mean of (-log p / target length); "mean_volume" sum(-log p) / sum(target lengths).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {REDUCTIONS}")
    b, t, u1, _ = token_logits.shape
    if duration_logits.shape[:3] != (b, t, u1) or duration_logits.shape[-1] != len(durations):
        raise ValueError(f"duration_logits {tuple(duration_logits.shape)} do not match token_logits {tuple(token_logits.shape)} and {len(durations)} durations")
    if targets.shape[0] != b or targets.shape[1] < u1 - 1:
        raise ValueError(f"targets {tuple(targets.shape)} must be (B, >= U) for token_logits {tuple(token_logits.shape)}")
    if int(logit_lengths.max()) > t or int(target_lengths.max()) > u1 - 1:
        raise ValueError("a length exceeds the logits' T or U")
    losses = _TDTLoss.apply(token_logits, duration_logits, targets[:, : u1 - 1], logit_lengths, target_lengths,
                            int(blank_id), tuple(int(d) for d in durations), float(sigma))
    tl = target_lengths.to(losses.dtype)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean_batch":
        return losses.mean()
    if reduction == "mean":
        return (losses / tl).mean()
    return losses.sum() / tl.sum()


def _log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim in float32, chunked over T so no full-size temporary exists."""
    b, t, u1, v = logits.shape
    out = torch.empty(b, t, u1, dtype=torch.float32, device=logits.device)
    step = max(1, CHUNK_ELEMENTS // max(1, b * u1 * v))
    for s in range(0, t, step):
        out[:, s : s + step] = torch.logsumexp(logits[:, s : s + step].float(), dim=-1)
    return out


def _arc_weights(token_logits, duration_logits, targets, blank_id, sigma):
    """Blank and label arc log-weights per duration, float64: Wb, Wl (B, T, U+1, D); and lse (B, T, U+1)."""
    lse = _log_normaliser(token_logits)
    blank_lp = token_logits[..., blank_id].float() - lse - sigma  # (B, T, U+1)
    b, t, u1 = lse.shape
    label_lp = torch.full_like(blank_lp, NEG_INF)
    if u1 > 1:
        idx = targets.clamp(0, token_logits.shape[-1] - 1).long()[:, None, :, None].expand(b, t, u1 - 1, 1)
        label_lp[:, :, :-1] = torch.gather(token_logits[:, :, :-1], 3, idx)[..., 0].float() - lse[:, :, :-1] - sigma
    dur_lp = torch.log_softmax(duration_logits.float(), dim=-1).double()  # (B, T, U+1, D)
    return blank_lp.double()[..., None] + dur_lp, label_lp.double()[..., None] + dur_lp, lse


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
    """Backward variables (B, T, U+1): log prob of finishing from (t, u); -inf outside each sample."""
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


class _TDTLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token_logits, duration_logits, targets, t_len, u_len, blank_id, durations, sigma):
        with torch.no_grad():
            wb, wl, lse = _arc_weights(token_logits, duration_logits, targets, blank_id, sigma)
            t_len, u_len = t_len.to(token_logits.device).long(), u_len.to(token_logits.device).long()
            beta = _beta(wb, wl, durations, t_len, u_len)
            logp = beta[:, 0, 0]  # (B,) log p(y | x); -inf when infeasible
        ctx.save_for_backward(token_logits, duration_logits, targets, t_len, u_len, lse)
        ctx.lattice = (wb, wl, beta)
        ctx.meta = (blank_id, durations, sigma)
        return (-logp).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_losses):
        token_logits, duration_logits, targets, t_len, u_len, lse = ctx.saved_tensors
        wb, wl, beta = ctx.lattice
        blank_id, durations, sigma = ctx.meta
        alpha = _alpha(wb, wl, durations)
        logp = beta[:, 0, 0]
        feasible = torch.isfinite(logp)
        b, t_max, u1, n_dur = wb.shape
        base = alpha - torch.where(feasible, logp, torch.zeros_like(logp))[:, None, None]  # (B, T, U+1)
        occ_b = torch.zeros_like(wb)
        occ_l = torch.zeros_like(wl)
        u_idx = torch.arange(u1, device=wb.device)
        is_final_u = u_idx[None, None, :] == u_len[:, None, None]
        t_idx = torch.arange(t_max, device=wb.device)
        for i, d in enumerate(durations):
            nxt = beta[:, d : d + t_max]  # (B, T, U+1) beta[t + d, u]
            if d > 0:
                lands = ((t_idx[None, :] + d) == t_len[:, None])[:, :, None] & is_final_u
                occ_b[..., i] = torch.exp(base + wb[..., i] + torch.where(lands, torch.zeros_like(nxt), nxt))
            nxt_label = torch.full_like(nxt, NEG_INF)
            nxt_label[:, :, :-1] = nxt[:, :, 1:]
            occ_l[..., i] = torch.exp(base + wl[..., i] + nxt_label)
        occ_b = torch.nan_to_num(occ_b * feasible[:, None, None, None], nan=0.0)
        occ_l = torch.nan_to_num(occ_l * feasible[:, None, None, None], nan=0.0)
        scale = grad_losses.to(torch.float64)[:, None, None]  # d(total)/d(loss_b)
        g_blank = occ_b.sum(-1) * scale  # (B, T, U+1) occupancy of blank arcs from (t, u)
        g_label = occ_l.sum(-1) * scale
        # d(-log p)/d z = softmax(z) * (occupancy of the state) - occupancy of the chosen class
        grad_tok = (token_logits.float() - lse[..., None]).exp_()  # softmax: the one full-size tensor we allocate
        grad_tok.mul_((g_blank + g_label).to(grad_tok.dtype)[..., None])
        grad_tok[..., blank_id] -= g_blank.to(grad_tok.dtype)
        if u1 > 1:
            idx = targets.clamp(0, token_logits.shape[-1] - 1).long()[:, None, :, None].expand(b, t_max, u1 - 1, 1)
            grad_tok[:, :, :-1].scatter_add_(3, idx, -g_label[:, :, :-1, None].to(grad_tok.dtype))
        occ_d = (occ_b + occ_l) * scale[..., None]  # (B, T, U+1, D)
        p_dur = torch.softmax(duration_logits.double(), dim=-1)
        grad_dur = (p_dur * occ_d.sum(-1, keepdim=True) - occ_d).to(duration_logits.dtype)
        return grad_tok.to(token_logits.dtype), grad_dur, None, None, None, None, None, None
