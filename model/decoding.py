"""Batched greedy TDT decoding (Xu et al. 2023, "Efficient Sequence Transduction by Jointly
Predicting Tokens and Durations", sec. 3.3), a pure function over the predictor and joint.

Semantics are exactly NeMo's batch-size-1 `GreedyTDTInfer._greedy_decode`, per utterance:
- at frame t, with prediction-network output g, take k = argmax token logits and
  d = durations[argmax duration logits] from the same joint output;
- a non-blank k is emitted at frame t with duration d, and g advances by feeding k;
- t += d; a frame may take at most `max_symbols_per_step` evaluations: when that count is reached
  t advances one more frame (NeMo adds this +1 even when the last d was > 0);
- a blank with d = 0 would re-evaluate the same (frame, g) forever; NeMo spins until the symbol
  guard fires and then steps one frame, so it is taken as one frame at once;
- each row stops at its own encoder length.

All rows advance together ("label looping"): one joint evaluation per step for every active row,
and one prediction-network step only for rows that emitted. State lives in fixed-shape device
tensors; the only host sync per step is one `tolist()` of two flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Hypothesis:
    """One utterance's result: token ids, the encoder frame each was emitted at, its duration in frames."""

    token_ids: tuple[int, ...]
    frames: tuple[int, ...]
    durations: tuple[int, ...]


@torch.inference_mode()
def greedy_tdt(
    encoder_out: torch.Tensor,
    encoder_lengths: torch.Tensor,
    predictor: nn.Module,
    joint: nn.Module,
    blank_id: int,
    durations: Sequence[int],
    max_symbols_per_step: int = 10,
) -> list[Hypothesis]:
    """encoder_out (B, T, D), encoder_lengths (B,) frames -> one Hypothesis per row.

    `predictor(tokens (B, 1), state) -> (out (B, 1, H), state)`; `joint.project_encoder`,
    `joint.project_predictor`, `joint.combine` as in model/joint.py; token logits come first
    (blank = `blank_id`, the last), then one logit per entry of `durations`.
    """
    b, t_max, _ = encoder_out.shape
    device = encoder_out.device
    n_classes = blank_id + 1
    dur_values = torch.tensor(list(durations), device=device, dtype=torch.long)
    lengths = encoder_lengths.to(device=device, dtype=torch.long).clamp(max=t_max)
    rows = torch.arange(b, device=device)
    if t_max == 0 or b == 0:
        return [Hypothesis((), (), ()) for _ in range(b)]

    enc_proj = joint.project_encoder(encoder_out)  # (B, T, J)
    tokens = torch.full((b, 1), blank_id, dtype=torch.long, device=device)  # blank = start of sequence
    g, state = predictor(tokens, None)
    g_proj = joint.project_predictor(g[:, 0])  # (B, J)

    time = torch.zeros(b, dtype=torch.long, device=device)
    symbols = torch.zeros(b, dtype=torch.long, device=device)  # evaluations at the current frame
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    active = time < lengths
    while True:
        f = enc_proj[rows, time.clamp(max=max(t_max - 1, 0))]  # (B, J) each row's current frame
        logits = joint.combine(f, g_proj).float()  # (B, V + 1 + n_durations)
        label = logits[:, :n_classes].argmax(-1)
        dur = dur_values[logits[:, n_classes:].argmax(-1)]
        emit = active & (label != blank_id)
        steps.append((emit, label, time.clone(), dur))

        # Advance time following NeMo's bs1 loop (see the module docstring).
        blank_stall = active & (label == blank_id) & (dur == 0)
        symbols = torch.where(active, symbols + 1, symbols)
        advance = torch.where(blank_stall, torch.ones_like(dur), dur)
        guard = active & ~blank_stall & (symbols >= max_symbols_per_step)  # max symbols at this frame
        advance = advance + guard.long()
        time = torch.where(active, time + advance, time)
        symbols = torch.where(active & (blank_stall | guard | (dur > 0)), torch.zeros_like(symbols), symbols)
        active = time < lengths

        any_active, any_emit = torch.stack([active.any(), emit.any()]).tolist()
        if any_emit:  # feed emitted labels to the prediction network, keep others' state
            g_new, state_new = predictor(label[:, None], state)
            keep = emit[None, :, None]
            state = (torch.where(keep, state_new[0], state[0]), torch.where(keep, state_new[1], state[1]))
            g_proj = torch.where(emit[:, None], joint.project_predictor(g_new[:, 0]), g_proj)
        if not any_active:
            break
    return _collect(steps, b)


def _collect(steps, b: int) -> list[Hypothesis]:
    """Per-step (emit, label, frame, duration) tensors -> per-row tuples, with one host copy."""
    emit, label, frame, dur = (torch.stack(x, dim=1).cpu() for x in zip(*steps))  # each (B, steps)
    out = []
    for i in range(b):
        m = emit[i]
        out.append(Hypothesis(tuple(label[i][m].tolist()), tuple(frame[i][m].tolist()), tuple(dur[i][m].tolist())))
    return out
