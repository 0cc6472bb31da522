"""Transducer losses with an analytic gradient: TDT (Xu et al. 2023, "Efficient Sequence Transduction
by Jointly Predicting Tokens and Durations", eq. 7) and the standard RNN-T loss (Graves 2012).

`tdt_loss` has the semantics of transformers' `tdt_loss` and NeMo's TDT losses: token log-probs are
log_softmax(token_logits) - sigma (logit under-normalisation), durations get their own log_softmax;
from lattice state (t, u) a blank with duration d > 0 goes to (t + d, u) and label y_u with duration d
(0 allowed) goes to (t + d, u + 1); a path ends with a blank arc from (T - d, U) to T. `omega` is
NeMo's: the probability that a call computes the standard RNN-T loss on the token logits instead
(durations then get a zero gradient).

How it is computed (no autograd graph over the lattice):
  1. Normalise: the token logits are read once, in cache-sized slabs, by a fused log_softmax into a
     reused buffer; only the blank and target-label log-probs are kept, (B, T, U+1) each.
  2. Lattice (pipeline/training/lattice.py): alpha, beta and every arc's occupancy, in float64.
  3. Backward: d(-log p)/dz = softmax(z) * (occupancy of the state) - occupancy of the chosen class;
     the softmax is recomputed slab by slab straight into the gradient tensor.
So the logits are read twice and the gradient written once; besides the logits and their gradient,
memory is one slab plus O(B T (U+1) D) lattice tensors.

Infeasible samples (no path: e.g. T too short for the durations available) get +inf loss and a zero
gradient, so one bad utterance cannot poison a batch with NaNs; filter them with `torch.isfinite`.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .lattice import lattice

REDUCTIONS = ("mean", "mean_batch", "mean_volume", "sum", "none")
SLAB_BYTES = 4 << 20  # token-logit slab normalised at a time: fits in L2/L3, reused across slabs
NEG_INF = float("-inf")
RNNT_DURATIONS = (0, 1)


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
    omega: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """token_logits (B, T, U+1, V+1), duration_logits (B, T, U+1, D), targets (B, U), lengths (B,).

    Reductions (as transformers/NeMo): "none" per-sample -log p; "sum"; "mean_batch" mean over the
    batch; "mean" mean of (-log p / target length); "mean_volume" sum(-log p) / sum(target lengths).
    omega in [0, 1]: probability of using the standard RNN-T loss for this call (drawn from
    `generator`, a CPU torch.Generator, or the global RNG).
    """
    _check(token_logits, targets, logit_lengths, target_lengths, reduction)
    b, t, u1, _ = token_logits.shape
    if duration_logits.shape[:3] != (b, t, u1) or duration_logits.shape[-1] != len(durations):
        raise ValueError(f"duration_logits {tuple(duration_logits.shape)} do not match token_logits {tuple(token_logits.shape)} and {len(durations)} durations")
    check_tdt_options(durations, omega)
    if draw_rnnt(omega, generator):
        losses = _TransducerLoss.apply(token_logits, None, targets[:, : u1 - 1], logit_lengths, target_lengths,
                                       int(blank_id), RNNT_DURATIONS, 0.0)
        losses = losses + 0.0 * duration_logits.sum()  # durations stay in the graph, with a zero gradient
    else:
        losses = _TransducerLoss.apply(token_logits, duration_logits, targets[:, : u1 - 1], logit_lengths,
                                       target_lengths, int(blank_id), tuple(int(d) for d in durations), float(sigma))
    return _reduce(losses, target_lengths, reduction)


def rnnt_loss(
    token_logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """Standard RNN-T loss: blank advances one frame, a label keeps the frame. Same shapes as tdt_loss."""
    _check(token_logits, targets, logit_lengths, target_lengths, reduction)
    u1 = token_logits.shape[2]
    losses = _TransducerLoss.apply(token_logits, None, targets[:, : u1 - 1], logit_lengths, target_lengths,
                                   int(blank_id), RNNT_DURATIONS, 0.0)
    return _reduce(losses, target_lengths, reduction)


def check_tdt_options(durations: Sequence[int], omega: float) -> None:
    if len(set(durations)) != len(durations) or min(durations) < 0 or max(durations) < 1:
        raise ValueError(f"durations {list(durations)} must be distinct, >= 0, and include one > 0")
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega={omega} must be a probability in [0, 1]")


def draw_rnnt(omega: float, generator: torch.Generator | None) -> bool:
    """NeMo's omega: whether this call uses the standard RNN-T loss (one draw per call)."""
    return omega > 0.0 and float(torch.rand((), generator=generator)) < omega


def _check(token_logits, targets, logit_lengths, target_lengths, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {REDUCTIONS}")
    if token_logits.dim() != 4:
        raise ValueError(f"token_logits must be (B, T, U+1, V+1); got {tuple(token_logits.shape)}")
    b, t, u1, _ = token_logits.shape
    if targets.shape[0] != b or targets.shape[1] < u1 - 1:
        raise ValueError(f"targets {tuple(targets.shape)} must be (B, >= U) for token_logits {tuple(token_logits.shape)}")
    if logit_lengths.shape != (b,) or target_lengths.shape != (b,):
        raise ValueError(f"lengths must be ({b},); got {tuple(logit_lengths.shape)} and {tuple(target_lengths.shape)}")
    if int(logit_lengths.max()) > t or int(target_lengths.max()) > u1 - 1:
        raise ValueError("a length exceeds the logits' T or U")


def _reduce(losses, target_lengths, reduction):
    tl = target_lengths.to(losses.device, losses.dtype)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean_batch":
        return losses.mean()
    if reduction == "mean":
        return (losses / tl).mean()
    return losses.sum() / tl.sum()


def _slabs(b: int, t: int, u1: int, v: int) -> Iterator[tuple[int, slice]]:
    """(batch index, time slice) pieces of about SLAB_BYTES of fp32 logits each."""
    step = max(1, SLAB_BYTES // (4 * u1 * v))
    for i in range(b):
        for s in range(0, t, step):
            yield i, slice(s, min(t, s + step))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for float32/half/bfloat16 logits (normalised in float32), float64 for float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def log_probs(token_logits: torch.Tensor, targets: torch.Tensor, blank_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank and target-label log-probs (B, T, U+1), float32 (float64 for float64 logits); -inf label at u = U."""
    b, t, u1, v = token_logits.shape
    cdt = _compute_dtype(token_logits)
    if not 0 <= blank_id < v:
        raise ValueError(f"blank_id={blank_id} outside the {v} token logits")
    blank_lp = torch.empty(b, t, u1, dtype=cdt, device=token_logits.device)
    label_lp = torch.full((b, t, u1), NEG_INF, dtype=cdt, device=token_logits.device)
    idx = targets.to(token_logits.device).long().clamp(0, v - 1)  # padding beyond a length is never on a path
    buf = None
    for i, ts in _slabs(b, t, u1, v):
        x = token_logits[i, ts].to(cdt)
        n = x.shape[0]
        if buf is None:
            buf = torch.empty(x.shape, dtype=cdt, device=x.device)
        out = buf[:n]
        torch._log_softmax(x, -1, False, out=out)  # fused one-pass kernel, no full-size temporary
        blank_lp[i, ts], label_lp[i, ts, :-1] = slab_log_probs(out, idx[i], blank_id)
    return blank_lp, label_lp


def slab_log_probs(lp: torch.Tensor, idx: torch.Tensor, blank_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of a slab (n, U+1, V) and its row's targets (U,) -> blank (n, U+1) and, for u < U,
    the next target label (n, U)."""
    n, u1 = lp.shape[:2]
    return lp[..., blank_id], lp[:, :-1].gather(-1, idx[None, :, None].expand(n, u1 - 1, 1))[..., 0]


def softmax_to_grad_(p: torch.Tensor, state: torch.Tensor, g_blank: torch.Tensor, g_label: torch.Tensor,
                     idx: torch.Tensor, blank_id: int) -> torch.Tensor:
    """In place, for a slab: softmax p (n, U+1, V) -> d(-log p)/dz = p * (occupancy of the state) - g_blank
    at the blank - g_label at the state's next target (idx (U,)); state, g_blank, g_label (n, U+1)."""
    n, u1 = p.shape[:2]
    p.mul_(state[..., None])
    p[..., blank_id] -= g_blank
    p[:, :-1].scatter_add_(-1, idx[None, :, None].expand(n, u1 - 1, 1), -g_label[:, :-1, None])
    return p


def arc_weights(blank_lp, label_lp, dur_lp, sigma):
    """Lattice arc log-weights (B, T, U+1, D) in float64 and the durations they use.

    dur_lp None selects the standard RNN-T lattice: blank only with d = 1, labels only with d = 0.
    """
    blank_lp, label_lp = blank_lp.double(), label_lp.double()
    if dur_lp is None:
        wb = torch.stack([torch.full_like(blank_lp, NEG_INF), blank_lp], -1)
        wl = torch.stack([label_lp, torch.full_like(label_lp, NEG_INF)], -1)
        return wb, wl
    dur_lp = dur_lp.double()
    return (blank_lp - sigma)[..., None] + dur_lp, (label_lp - sigma)[..., None] + dur_lp


def state_gradients(occ_b, occ_l, scale):
    """Per-state gradient factors from arc occupancies and d(total)/d(loss_b) `scale` (B,):
    g_blank, g_label (B, T, U+1) and g_dur (B, T, U+1, D) = occupancy of every arc by duration."""
    s = scale.to(occ_b.device, torch.float64)[:, None, None]
    return occ_b.sum(-1) * s, occ_l.sum(-1) * s, (occ_b + occ_l) * s[..., None]


def duration_grad(duration_logits, g_dur):
    """d(-log p)/d duration logits = softmax * (sum of occupancies) - occupancy per duration."""
    p_dur = torch.softmax(duration_logits.double(), dim=-1)
    return (p_dur * g_dur.sum(-1, keepdim=True) - g_dur).to(duration_logits.dtype)


class _TransducerLoss(torch.autograd.Function):
    """TDT loss when duration_logits is given; the standard RNN-T loss (durations (0, 1)) when None."""

    @staticmethod
    def forward(ctx, token_logits, duration_logits, targets, t_len, u_len, blank_id, durations, sigma):
        need_grad = any(ctx.needs_input_grad[:2])
        with torch.no_grad():
            blank_lp, label_lp = log_probs(token_logits, targets, blank_id)
            dur_lp = None if duration_logits is None else torch.log_softmax(duration_logits.double(), dim=-1)
            wb, wl = arc_weights(blank_lp, label_lp, dur_lp, sigma)
            logp, occ_b, occ_l = lattice(wb, wl, durations, t_len, u_len, occupancy=need_grad)
        if need_grad:
            ctx.save_for_backward(token_logits, duration_logits, targets, occ_b, occ_l)
            ctx.blank_id = blank_id
        return (-logp).to(token_logits.device, _compute_dtype(token_logits))

    @staticmethod
    def backward(ctx, grad_losses):
        token_logits, duration_logits, targets, occ_b, occ_l = ctx.saved_tensors
        g_blank, g_label, g_dur = state_gradients(occ_b.to(token_logits.device), occ_l.to(token_logits.device), grad_losses)
        grad_tok = grad_dur = None
        if ctx.needs_input_grad[0]:
            grad_tok = _token_grad(token_logits, targets, ctx.blank_id, g_blank, g_label)
        if duration_logits is not None and ctx.needs_input_grad[1]:
            grad_dur = duration_grad(duration_logits, g_dur)
        return grad_tok, grad_dur, None, None, None, None, None, None


def _token_grad(token_logits, targets, blank_id, g_blank, g_label):
    """softmax(z) * (g_blank + g_label) - g_blank at blank - g_label at the target label, slab by slab."""
    b, t, u1, v = token_logits.shape
    cdt = _compute_dtype(token_logits)
    grad = torch.empty((b, t, u1, v), dtype=cdt, device=token_logits.device)
    state, g_blank, g_label = (g_blank + g_label).to(cdt), g_blank.to(cdt), g_label.to(cdt)
    idx = targets.to(grad.device).long().clamp(0, v - 1)
    for i, ts in _slabs(b, t, u1, v):
        out = grad[i, ts]
        torch._softmax(token_logits[i, ts].to(cdt), -1, False, out=out)
        softmax_to_grad_(out, state[i, ts], g_blank[i, ts], g_label[i, ts], idx[i], blank_id)
    return grad.to(token_logits.dtype)
