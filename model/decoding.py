"""Batched greedy TDT decoding (Xu et al. 2023, "Efficient Sequence Transduction by Jointly
Predicting Tokens and Durations", sec. 3.3), a pure function over the predictor and joint.

At frame t, with prediction-network output g, take k = argmax token logits and d = durations[argmax
duration logits] from the same joint output; a non-blank k is emitted at frame t with duration d and g
advances by feeding k; t += d; each row stops at its own encoder length (a label whose duration jumps
past the end is still emitted). The two NeMo 3.0 decoders differ only in the guard that stops a frame
from emitting forever (`rule`):

- "greedy_batch" (label looping, `GreedyBatchedTDTLabelLoopingComputer.torch_impl`, what NeMo's
  transcribe() runs for every Parakeet checkpoint, `decoding.strategy: greedy_batch`, and what its CUDA
  graphs compute): a blank with duration 0 advances one frame; blanks do not count toward the limit;
  time is forced one frame on only when a label emitted with duration 0 is the `max_symbols`-th label
  at its frame (`last_nb_timestamp_lasts >= max_symbols` and `last_nb_timestamp == time`).
- "greedy" (`GreedyTDTInfer._greedy_decode`, strategy `greedy`): a frame may take at most
  `max_symbols` joint evaluations, blanks included; when that count is reached t advances one more
  frame, even when the last d was > 0. A blank with d = 0 re-evaluates the same (frame, g) until the
  guard fires, so it is taken as one frame at once.

The batch is decoded by label looping: each outer step finds the next label of every active row (an
inner loop where rows holding a blank skip ahead by the blank's duration, all rows evaluated at
once), then runs the prediction network once, for the whole batch, keeping the old state of rows
that did not emit. Durations are each row's own (NeMo 3.0's batched CPU bookkeeping records wrong
durations for rows that found their label early; its batch-size-1 output, the reference, does not).
Two implementations give equal hypotheses: the compact one here (CPU) and the fixed-shape stages of
model/label_looping.py (static tensors, no host reads inside a stage: CUDA-graph capturable).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .confidence import BlankScores, ConfidenceConfig, step_confidence, with_blanks


@dataclass(frozen=True)
class Hypothesis:
    """One utterance's result: token ids, the encoder frame each was emitted at, its duration in frames."""

    token_ids: tuple[int, ...]
    frames: tuple[int, ...]
    durations: tuple[int, ...]
    token_confidence: tuple[float, ...] = ()  # per token, when decoded with a ConfidenceConfig


@torch.inference_mode()
def greedy_tdt(
    encoder_out: torch.Tensor,
    encoder_lengths: torch.Tensor,
    predictor: nn.Module,
    joint: nn.Module,
    blank_id: int,
    durations: Sequence[int],
    max_symbols_per_step: int = 10,
    compact: bool | None = None,
    rule: str = "greedy_batch",
    confidence: ConfidenceConfig | None = None,
) -> list[Hypothesis]:
    """encoder_out (B, T, D), encoder_lengths (B,) frames -> one Hypothesis per row.

    `rule`: "greedy_batch" (label looping, NeMo's default) or "greedy" (GreedyTDTInfer), see above.
    `confidence`: also score each token from the joint outputs the search evaluates (model/confidence.py);
    blank steps are those label looping records (a stalled blank under rule "greedy" counts once).

    `compact`: search labels on the rows still searching only, each with a window of frames evaluated
    at once (fewer evaluations, data-dependent shapes, host syncs per step: the CPU path), or run
    model/label_looping.py's fixed-shape stages (every row, one frame at a time, masked in-place updates
    of static tensors: what a CUDA graph captures; the model's CUDA path captures them). None picks
    compact on CPU, fixed shapes elsewhere; the result is identical.

    `predictor(tokens (B, 1), state) -> (out (B, 1, H), state (h, c) each (L, B, H))`;
    `joint.project_encoder`, `joint.project_predictor`, `joint.combine` as in model/joint.py; token
    logits come first (blank = `blank_id`, the last), then one logit per entry of `durations`.
    """
    _check_args(encoder_out, encoder_lengths, blank_id, durations, max_symbols_per_step)
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    looping = rule == "greedy_batch"
    b, t_max, _ = encoder_out.shape
    if compact is None:
        compact = encoder_out.device.type == "cpu"
    if t_max == 0 or b == 0:
        return [Hypothesis((), (), ()) for _ in range(b)]
    if not compact:
        from .label_looping import LabelLooping  # the fixed-shape stages; it builds on this module

        return LabelLooping(predictor, joint, blank_id, durations, max_symbols_per_step, rule, confidence)(
            encoder_out, encoder_lengths)
    device = encoder_out.device
    lengths = encoder_lengths.to(device=device, dtype=torch.long).clamp(0, t_max)
    dur_values = torch.tensor(list(durations), device=device, dtype=torch.long)
    enc_proj = joint.project_encoder(encoder_out)  # (B, T, J), projected once

    score = (lambda logits: step_confidence(logits, blank_id, confidence)) if confidence else None
    blanks = BlankScores(b, confidence.aggregation, device) if confidence and not confidence.exclude_blank else None

    sos = torch.full((b, 1), blank_id, dtype=torch.long, device=device)  # blank = start of sequence
    g, state = predictor(sos, None)
    g_proj = joint.project_predictor(g[:, 0])  # (B, J)
    time = torch.zeros(b, dtype=torch.long, device=device)  # current frame per row
    symbols = torch.zeros(b, dtype=torch.long, device=device)  # count at the current frame (see _advance)
    steps: list[tuple[torch.Tensor, ...]] = []
    frames_per_search = 2.0  # running estimate of frames a label search walks (sizes the window)
    while True:
        active = time < lengths
        before = time.clone()
        label, dur, conf, time, symbols = _find_labels_windowed(
            enc_proj, g_proj, joint, time, symbols, lengths, active, blank_id, dur_values, max_symbols_per_step,
            frames_per_search, looping, score, blanks)
        walked = (time - before)[active].float()
        if walked.numel():
            frames_per_search = 0.7 * frames_per_search + 0.3 * float(walked.mean())
        emit = time < lengths  # every row still inside its audio now holds a label
        if not bool(emit.any()):
            break
        extra = () if not score else (conf,) if blanks is None else (conf, *blanks.take(emit))
        steps.append((emit, label, time.clone(), dur, *extra))
        time, symbols = _advance(time, symbols, label, dur, emit, blank_id, max_symbols_per_step, looping)
        # One prediction-network step for the batch; rows that did not emit keep their state.
        g_new, state_new = predictor(torch.where(emit, label, blank_id)[:, None], state)
        keep = emit[None, :, None]
        state = (torch.where(keep, state_new[0], state[0]), torch.where(keep, state_new[1], state[1]))
        g_proj = torch.where(emit[:, None], joint.project_predictor(g_new[:, 0]), g_proj)
    return _collect(steps, b, confidence, blanks)


RULES = ("greedy_batch", "greedy")
WINDOW_ROWS = 64  # joint rows per window evaluation (rows x frames); measured best of 32 / 64 / 128 at batch 1-16
MAX_WINDOW = 8  # frames evaluated ahead per row


def _find_labels_windowed(enc_proj, g_proj, joint, time, symbols, lengths, active, blank_id, dur_values, max_symbols,
                          frames_per_search: float, looping: bool, score=None, blanks: BlankScores | None = None):
    """The label search of one outer step, evaluating each searching row's joint on a window of frames.

    While a row holds a blank its prediction-network output g is fixed, so its joint outputs at the
    next frames do not depend on where the blanks land: one (rows x K frames) matmul reads the head's
    weights once (on CPU, at small batch, the cost of one frame) and the blank skips inside the window
    need no further evaluation. A row that jumps past its window gets a new one. Same (frame, g) ->
    same outputs, so the result equals evaluating frame by frame. `frames_per_search` (a running mean
    of how far searches walked) sizes the window, so token-dense audio does not pay for unused frames.
    """
    b, t_max, _ = enc_proj.shape
    rows = torch.arange(b, device=enc_proj.device)
    which = active.nonzero().squeeze(1)
    # K: enough frames for the walk this call has been seeing (tokens on most frames -> K = 1, plain
    # frame-by-frame search), within a rows x K budget that keeps the matmul weight-bound
    k = max(1, min(MAX_WINDOW, WINDOW_ROWS // max(1, len(which)), math.ceil(frames_per_search + 1)))
    offsets = torch.arange(k, device=enc_proj.device)

    def window(r: torch.Tensor, start: torch.Tensor):
        frames = (start[:, None] + offsets[None, :]).clamp(max=t_max - 1)  # (R, K)
        logits = joint.combine(enc_proj[r[:, None], frames], g_proj[r][:, None, :]).float()  # (R, K, C)
        label, dur = logits[..., : blank_id + 1].argmax(-1), dur_values[logits[..., blank_id + 1 :].argmax(-1)]
        return label, dur, (score(logits) if score else torch.zeros_like(label, dtype=torch.float32))

    win_label = torch.full((b, k), blank_id, dtype=torch.long, device=enc_proj.device)
    win_dur = torch.zeros((b, k), dtype=torch.long, device=enc_proj.device)
    win_conf = torch.zeros((b, k), dtype=torch.float32, device=enc_proj.device)
    start = time.clone()
    if len(which):
        win_label[which], win_dur[which], win_conf[which] = window(which, time[which])
    label, dur, conf = win_label[:, 0], win_dur[:, 0], win_conf[:, 0]
    searching = active & (label == blank_id)
    if blanks is not None:
        blanks.add(conf, searching)
    while bool(searching.any()):
        time, symbols = _advance(time, symbols, label, dur, searching, blank_id, max_symbols, looping)
        searching &= time < lengths
        off = time - start
        hit = searching & (off < k)
        col = off.clamp(0, k - 1)
        label = torch.where(hit, win_label[rows, col], label)
        dur = torch.where(hit, win_dur[rows, col], dur)
        conf = torch.where(hit, win_conf[rows, col], conf)
        miss = (searching & ~hit).nonzero().squeeze(1)
        if len(miss):
            new_label, new_dur, new_conf = window(miss, time[miss])
            win_label[miss], win_dur[miss], win_conf[miss], start[miss] = new_label, new_dur, new_conf, time[miss]
            label[miss], dur[miss], conf[miss] = new_label[:, 0], new_dur[:, 0], new_conf[:, 0]
        if blanks is not None:
            blanks.add(conf, searching & (label == blank_id))
        searching &= label == blank_id
    return label, dur, conf, time, symbols


def _advance(time, symbols, label, dur, mask, blank_id: int, max_symbols: int, looping: bool):
    """One joint evaluation's effect on (frame, count at the frame) for rows in `mask`.

    looping (greedy_batch): the count is of labels emitted at the current frame. A blank moves at least
    one frame (NeMo: "for blank labels force duration >= 1"); a label with d > 0 moves d; a label with
    d = 0 stays unless it is the max_symbols-th at its frame, which forces one frame ("force blank").
    not looping (greedy): the count is of joint evaluations at the frame, blanks included; the
    max_symbols-th forces one frame on top of d (GreedyTDTInfer's `symbols_added == max_symbols`).
    """
    blank = label == blank_id
    count = symbols + 1
    if looping:
        step = torch.where(blank, dur.clamp(min=1), dur)
        guard = ~blank & (dur == 0) & (count >= max_symbols)
        step = step + guard.long()
    else:
        # A blank with duration 0 leaves (frame, g) unchanged, so NeMo re-evaluates it until the
        # symbol guard fires and then steps one frame: without this it would loop forever.
        stall = blank & (dur == 0)
        guard = ~stall & (count >= max_symbols)  # max symbols at this frame: force one more frame
        step = torch.where(stall, torch.ones_like(dur), dur) + guard.long()
    new_time = torch.where(mask, time + step, time)
    moved = step > 0  # the frame changed: its count restarts
    new_symbols = torch.where(mask, torch.where(moved, torch.zeros_like(count), count), symbols)
    return new_time, new_symbols


def _check_args(encoder_out, encoder_lengths, blank_id, durations, max_symbols_per_step) -> None:
    if encoder_out.dim() != 3:
        raise ValueError(f"encoder_out must be (B, T, D), got shape {tuple(encoder_out.shape)}")
    if encoder_lengths.shape != encoder_out.shape[:1]:
        raise ValueError(f"encoder_lengths must be ({encoder_out.shape[0]},), got {tuple(encoder_lengths.shape)}")
    if not durations or min(durations) < 0:
        raise ValueError(f"durations must be a non-empty list of frame counts >= 0, got {list(durations)}")
    if max_symbols_per_step < 1:
        raise ValueError(f"max_symbols_per_step must be >= 1, got {max_symbols_per_step}")
    if blank_id < 0:
        raise ValueError(f"blank_id must be >= 0, got {blank_id}")


def _collect(steps, b: int, confidence: ConfidenceConfig | None = None, blanks: BlankScores | None = None) -> list[Hypothesis]:
    """Per-step (emit, label, frame, duration[, score[, blank acc, blank count]]) tensors -> per-row
    tuples, with one host copy. A token's blanks are those taken when the next token was emitted (or
    left at the end)."""
    if not steps:
        return [Hypothesis((), (), ()) for _ in range(b)]
    cols = [torch.stack(x, dim=1).cpu() for x in zip(*steps)]  # each (B, steps)
    emit, label, frame, dur = cols[:4]
    if blanks is not None:
        final_acc, final_n = blanks.acc.cpu(), blanks.n.cpu()
    out = []
    for i in range(b):
        m = emit[i]
        conf: tuple[float, ...] = ()
        if confidence is not None:
            scores = cols[4][i][m].tolist()
            if blanks is not None:  # blanks taken at emission k + 1 belong to token k
                acc = cols[5][i][m].tolist()[1:] + [float(final_acc[i])]
                n = cols[6][i][m].tolist()[1:] + [int(final_n[i])]
                scores = [with_blanks(sc, a, c, confidence.aggregation) for sc, a, c in zip(scores, acc, n)]
            conf = tuple(scores)
        out.append(Hypothesis(tuple(label[i][m].tolist()), tuple(frame[i][m].tolist()), tuple(dur[i][m].tolist()), conf))
    return out
