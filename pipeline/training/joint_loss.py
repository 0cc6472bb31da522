"""Fused joint + transducer loss: the TDT (or RNN-T) loss straight from the joint's projected inputs,
computing the (B, T, U+1, V+1+D) logits one slab at a time so they never exist all at once.

    logits[b, t, u] = W @ dropout(relu(f[b, t] + g[b, u])) + bias     (Joint.combine, model/joint.py)

Forward: per slab, the hidden activations and logits are formed, normalised (only the blank, target
label and duration log-probs are kept) and dropped; the lattice gives every arc's occupancy.
Backward: per slab, hidden and logits are recomputed (the dropout mask from the same seed), the logit
gradient is formed from the occupancies and pushed through the head and the ReLU into dW, dbias, df,
dg. Cost: one extra head matmul (4 instead of 3) for memory O(slab + B T U D) instead of the logits,
their gradient and autograd's saved activations: the path for wide heads (v3: 8198 classes).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .lattice import lattice
from .loss import (NEG_INF, RNNT_DURATIONS, _check, _compute_dtype, _reduce, arc_weights, check_tdt_options, draw_rnnt,
                   duration_grad, slab_log_probs, softmax_to_grad_, state_gradients)

JOINT_SLAB_BYTES = 32 << 20  # fp32 logits per slab: large enough for efficient matmuls


def tdt_joint_loss(
    enc_proj: torch.Tensor,
    pred_proj: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
    durations: Sequence[int],
    sigma: float = 0.0,
    reduction: str = "mean",
    dropout: float = 0.0,
    omega: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """enc_proj (B, T, J) = joint.project_encoder(enc); pred_proj (B, U+1, J) = joint.project_predictor(pred);
    head_weight (V+1+D, J), head_bias (V+1+D,): the joint's output layer (token logits first, blank = V,
    then one logit per duration). Same value and gradients as
    tdt_loss(*joint.split(joint.combine(f[:, :, None], g[:, None]))) with the same dropout mask.
    `dropout` > 0 applies inverted dropout to the hidden activations (pass joint.dropout in training).
    """
    b, t, _ = enc_proj.shape
    u1 = pred_proj.shape[1]
    n_cls = head_weight.shape[0] - len(durations)
    if pred_proj.shape[0] != b or pred_proj.shape[2] != enc_proj.shape[2] or head_weight.shape[1] != enc_proj.shape[2]:
        raise ValueError(f"enc_proj {tuple(enc_proj.shape)}, pred_proj {tuple(pred_proj.shape)} and head "
                         f"{tuple(head_weight.shape)} disagree on the joint width")
    if n_cls < 2 or not 0 <= blank_id < n_cls:
        raise ValueError(f"head of {head_weight.shape[0]} outputs cannot hold blank {blank_id} and {len(durations)} durations")
    _check(torch.empty(b, t, u1, 0, device="meta"), targets, logit_lengths, target_lengths, reduction)
    check_tdt_options(durations, omega)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    rnnt = draw_rnnt(omega, generator)
    seed = int(torch.randint(0, 2**62, (), generator=generator)) if dropout > 0 else 0
    losses = _JointLoss.apply(enc_proj, pred_proj, head_weight, head_bias, targets[:, : u1 - 1], logit_lengths,
                              target_lengths, int(blank_id), tuple(int(d) for d in durations), float(sigma),
                              rnnt, float(dropout), seed)
    return _reduce(losses, target_lengths, reduction)


def _slabs(b: int, t: int, u1: int, width: int) -> Iterator[tuple[int, slice]]:
    step = max(1, JOINT_SLAB_BYTES // (4 * u1 * width))
    for i in range(b):
        for s in range(0, t, step):
            yield i, slice(s, min(t, s + step))


def _hidden(f, g, i, ts, dropout, seed, k):
    """relu(f[i, ts, None] + g[i, None]) with the k-th slab's inverted-dropout mask: (nt, U+1, J), mask."""
    h = torch.relu(f[i, ts, None, :] + g[i, None, :, :])
    if dropout == 0.0:
        return h, None
    gen = torch.Generator(device=h.device)
    gen.manual_seed(seed + k)
    keep = torch.empty_like(h).bernoulli_(1.0 - dropout, generator=gen) / (1.0 - dropout)
    return h * keep, keep


class _JointLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, g, weight, bias, targets, t_len, u_len, blank_id, durations, sigma, rnnt, dropout, seed):
        b, t, _ = f.shape
        u1 = g.shape[1]
        n_dur = len(durations)
        n_cls = weight.shape[0] - n_dur
        dev, cdt = f.device, _compute_dtype(f)
        blank_lp = torch.empty(b, t, u1, dtype=cdt, device=dev)
        label_lp = torch.full((b, t, u1), NEG_INF, dtype=cdt, device=dev)
        dur_logits = torch.empty(b, t, u1, n_dur, dtype=cdt, device=dev)
        idx = targets.to(dev).long().clamp(0, n_cls - 1)
        with torch.no_grad():
            for k, (i, ts) in enumerate(_slabs(b, t, u1, weight.shape[0])):
                h, _ = _hidden(f, g, i, ts, dropout, seed, k)
                z = torch.nn.functional.linear(h, weight, bias).to(cdt)  # (nt, U+1, V+1+D)
                dur_logits[i, ts] = z[..., n_cls:]
                lp = torch.log_softmax(z[..., :n_cls], dim=-1)
                blank_lp[i, ts], label_lp[i, ts, :-1] = slab_log_probs(lp, idx[i], blank_id)
                del h, z, lp
            dur_lp = None if rnnt else torch.log_softmax(dur_logits.double(), dim=-1)
            wb, wl = arc_weights(blank_lp, label_lp, dur_lp, sigma)
            lat_durations = RNNT_DURATIONS if rnnt else durations
            need_grad = any(ctx.needs_input_grad[:4])
            logp, occ_b, occ_l = lattice(wb, wl, lat_durations, t_len, u_len, occupancy=need_grad)
        if need_grad:
            ctx.save_for_backward(f, g, weight, bias, targets, dur_logits, occ_b, occ_l)
            ctx.meta = (blank_id, rnnt, dropout, seed)
            # the backward recomputes the logits: under the forward's autocast state, so they are the same
            ctx.autocast = (torch.is_autocast_enabled(dev.type), torch.get_autocast_dtype(dev.type))
        return (-logp).to(dev, cdt)

    @staticmethod
    def backward(ctx, grad_losses):
        f, g, weight, bias, targets, dur_logits, occ_b, occ_l = ctx.saved_tensors
        blank_id, rnnt, dropout, seed = ctx.meta
        dev, cdt = f.device, _compute_dtype(f)
        b, t, _ = f.shape
        u1 = g.shape[1]
        n_cls = weight.shape[0] - dur_logits.shape[-1]
        g_blank, g_label, g_dur = state_gradients(occ_b.to(dev), occ_l.to(dev), grad_losses)
        grad_dur_logits = None if rnnt else duration_grad(dur_logits, g_dur).to(cdt)
        state = (g_blank + g_label).to(cdt)
        g_blank, g_label = g_blank.to(cdt), g_label.to(cdt)
        idx = targets.to(dev).long().clamp(0, n_cls - 1)
        w32 = weight.to(cdt)
        grad_f, grad_g = torch.zeros_like(f, dtype=cdt), torch.zeros_like(g, dtype=cdt)
        grad_w = torch.zeros_like(w32)
        grad_bias = torch.zeros(weight.shape[0], dtype=cdt, device=dev)
        for k, (i, ts) in enumerate(_slabs(b, t, u1, weight.shape[0])):
            with torch.no_grad():
                h, keep = _hidden(f, g, i, ts, dropout, seed, k)
                with torch.autocast(dev.type, dtype=ctx.autocast[1], enabled=ctx.autocast[0]):
                    z = torch.nn.functional.linear(h, weight, bias)
                dz = z = z.to(cdt)  # the logit gradient overwrites the logits, slab by slab
                dz[..., :n_cls] = torch.softmax(z[..., :n_cls], dim=-1)
                softmax_to_grad_(dz[..., :n_cls], state[i, ts], g_blank[i, ts], g_label[i, ts], idx[i], blank_id)
                dz[..., n_cls:] = 0.0 if grad_dur_logits is None else grad_dur_logits[i, ts]
                rows = dz.reshape(-1, dz.shape[-1])
                h2 = h.reshape(-1, h.shape[-1]).to(cdt)
                grad_w.addmm_(rows.t(), h2)
                grad_bias += rows.sum(0)
                dh = (rows @ w32).reshape(h.shape)
                dh.mul_(h > 0)  # relu (dropout zeros are already zeros of h)
                if keep is not None:
                    dh.mul_(keep)
                grad_f[i, ts] += dh.sum(1)
                grad_g[i] += dh.sum(0)
        return (grad_f.to(f.dtype), grad_g.to(g.dtype), grad_w.to(weight.dtype),
                None if bias is None else grad_bias.to(bias.dtype), None, None, None, None, None, None, None, None, None)
