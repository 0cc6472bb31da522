"""Greedy TDT label looping as fixed-shape stages over static tensors: the form a CUDA graph captures.

The same search as model/decoding.py (same rules, same confidence scores, equal hypotheses), written
the way NeMo 3.0's `GreedyBatchedTDTLabelLoopingComputer` writes it for CUDA graphs ("no_while_loops"
mode, `_before_outer_loop` / `_before_inner_loop_get_joint_output` / `_inner_loop_step_find_next_non_blank`
/ `_after_inner_loop`): every tensor a stage reads or writes lives in a `_State` allocated once for a
capacity of (rows, frames); a stage changes it in place, allocates nothing whose shape depends on data,
and never reads a device value on the host. Between stages the host reads one boolean (are rows still
active / still searching for a label), as NeMo does between its graphs. Hypotheses accumulate in
preallocated (rows, frames x max_symbols) buffers: a frame holds at most max_symbols labels under
either rule, so they cannot overflow.

A batch smaller than the capacity runs in it with the spare rows' lengths at 0 (inactive), so one
capture serves every batch up to the capacity; a larger batch or longer input grows the state (and
recaptures). With `cuda_graphs=True` on a CUDA device each stage is captured once per state and
replayed (what the model does on CUDA: `decoder_for`); elsewhere the stages run eagerly (the CPU tests run
exactly the code a graph captures).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .confidence import BlankScores, ConfidenceConfig, step_confidence, with_blanks
from .decoding import RULES, Hypothesis, _advance, _check_args

log = logging.getLogger(__name__)

STAGES = ("start", "before_inner", "inner", "after_inner")
FRAME_ROUNDING = 64  # frame capacity grows in steps of this, so nearby lengths share a captured state


@dataclass
class _State:
    """Static tensors of one capacity. `enc`/`lengths` are the inputs (copied in per call)."""

    enc: torch.Tensor  # (B, T, J) projected encoder output
    lengths: torch.Tensor  # (B,) frames; 0 for spare rows
    sos: torch.Tensor  # (B, 1) blank, the start of sequence
    rows: torch.Tensor  # (B,) 0..B-1
    time: torch.Tensor  # (B,) current frame
    symbols: torch.Tensor  # (B,) count at the current frame (see decoding._advance)
    label: torch.Tensor  # (B,) label found at the current frame
    dur: torch.Tensor  # (B,) its duration in frames
    conf: torch.Tensor  # (B,) its step score (0 without confidence)
    searching: torch.Tensor  # (B,) bool: holds a blank and is still inside its audio
    g_proj: torch.Tensor  # (B, J) projected prediction-network output
    h: torch.Tensor  # (L, B, H) prediction-network state
    c: torch.Tensor
    blanks: BlankScores | None  # blank-step scores since the last token (confidence with blanks)
    count: torch.Tensor  # (B,) labels emitted so far
    out_label: torch.Tensor  # (B, T x max_symbols) emitted labels, their frames, durations, scores
    out_frame: torch.Tensor
    out_dur: torch.Tensor
    out_conf: torch.Tensor
    out_blank_acc: torch.Tensor | None  # blank aggregate / count taken at each emission
    out_blank_n: torch.Tensor | None
    active_any: torch.Tensor  # () bool: some row is still inside its audio
    searching_any: torch.Tensor  # () bool: some row is still searching

    @property
    def capacity(self) -> tuple[int, int]:
        return self.enc.shape[0], self.enc.shape[1]


class LabelLooping:
    """`decoder(encoder_out (B, T, D), encoder_lengths (B,)) -> list[Hypothesis]`, equal to
    `greedy_tdt(..., rule=rule, confidence=confidence)`. Keeps its state (and captured graphs) between
    calls: make one per (model, rule, confidence) and reuse it. `cuda_graphs` needs a CUDA device."""

    def __init__(self, predictor: nn.Module, joint: nn.Module, blank_id: int, durations: Sequence[int],
                 max_symbols_per_step: int = 10, rule: str = "greedy_batch",
                 confidence: ConfidenceConfig | None = None, cuda_graphs: bool = False):
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}: expected one of {RULES}")
        self.predictor, self.joint = predictor, joint
        self.blank_id, self.durations = blank_id, tuple(durations)
        self.max_symbols, self.looping = max_symbols_per_step, rule == "greedy_batch"
        self.confidence, self.cuda_graphs = confidence, cuda_graphs
        self.state: _State | None = None
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self._dur_values: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, encoder_out: torch.Tensor, encoder_lengths: torch.Tensor) -> list[Hypothesis]:
        _check_args(encoder_out, encoder_lengths, self.blank_id, self.durations, self.max_symbols)
        b, t, _ = encoder_out.shape
        if b == 0 or t == 0:
            return [Hypothesis((), (), ()) for _ in range(b)]
        if self.cuda_graphs and encoder_out.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the encoder output on a CUDA device, got {encoder_out.device}")
        enc_proj = self.joint.project_encoder(encoder_out)  # (B, T, J)
        s = self._state_for(enc_proj)
        s.enc[:b, :t].copy_(enc_proj)
        s.lengths.zero_()
        s.lengths[:b].copy_(encoder_lengths.to(device=s.lengths.device, dtype=torch.long).clamp(0, t))
        self._stage("start")
        while bool(s.active_any):
            self._stage("before_inner")
            while bool(s.searching_any):
                self._stage("inner")
            self._stage("after_inner")
        return self._collect(b)

    # --- state -----------------------------------------------------------------------------------

    def _state_for(self, enc_proj: torch.Tensor) -> _State:
        """The state to run `enc_proj` (B, T, J) in: the current one if it fits, else a new one (recaptured).
        A new one keeps the larger of each old and needed dimension (many short clips, then one long chunk,
        then short clips again: one capture), unless that would hold over twice the audio the call needs
        (then it is sized to the call, so memory follows the inputs)."""
        b, t, j = enc_proj.shape
        t = -(-t // FRAME_ROUNDING) * FRAME_ROUNDING
        s = self.state
        if s is not None and s.enc.dtype == enc_proj.dtype and s.enc.device == enc_proj.device and s.enc.shape[2] == j:
            cap_b, cap_t = s.capacity
            if b <= cap_b and t <= cap_t:
                return s
            if max(b, cap_b) * max(t, cap_t) <= 2 * b * t:
                b, t = max(b, cap_b), max(t, cap_t)
        self.state = None  # the old buffers go before the new ones are made
        self.graphs = {}
        self.state = self._allocate(b, t, enc_proj)
        if self.cuda_graphs:
            self._capture()
        return self.state

    def _allocate(self, b: int, t: int, enc_proj: torch.Tensor) -> _State:
        dev = enc_proj.device
        self._dur_values = torch.tensor(self.durations, device=dev, dtype=torch.long)
        sos = torch.full((b, 1), self.blank_id, dtype=torch.long, device=dev)
        g, (h, c) = self.predictor(sos, None)
        g_proj = self.joint.project_predictor(g[:, 0])
        cap = t * self.max_symbols
        long = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=dev)  # noqa: E731
        conf = self.confidence
        blanks = BlankScores(b, conf.aggregation, dev) if conf is not None and not conf.exclude_blank else None
        return _State(
            enc=torch.zeros(b, t, enc_proj.shape[2], dtype=enc_proj.dtype, device=dev), lengths=long(b), sos=sos,
            rows=torch.arange(b, device=dev), time=long(b), symbols=long(b), label=long(b), dur=long(b),
            conf=torch.zeros(b, device=dev), searching=torch.zeros(b, dtype=torch.bool, device=dev),
            g_proj=g_proj.clone(), h=h.clone(), c=c.clone(), blanks=blanks, count=long(b),
            out_label=long(b, cap), out_frame=long(b, cap), out_dur=long(b, cap),
            out_conf=torch.zeros(b, cap, device=dev),
            out_blank_acc=torch.zeros(b, cap, dtype=torch.float64, device=dev) if blanks else None,
            out_blank_n=long(b, cap) if blanks else None,
            active_any=torch.zeros((), dtype=torch.bool, device=dev),
            searching_any=torch.zeros((), dtype=torch.bool, device=dev),
        )

    # --- graphs ----------------------------------------------------------------------------------

    def _stage(self, name: str) -> None:
        graph = self.graphs.get(name)
        if graph is not None:
            graph.replay()
        else:
            getattr(self, "_" + name)()

    def _capture(self) -> None:
        """Warm every stage up on a side stream (as torch.cuda.graphs' docs ask), then capture each. A capture
        that fails (an op this GPU or torch build cannot capture) leaves the stages eager, as NeMo falls back
        from graphs: same results, more kernel launches; the failure is logged once."""
        try:
            side = torch.cuda.Stream(device=self.state.enc.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for name in STAGES:
                    getattr(self, "_" + name)()
            torch.cuda.current_stream().wait_stream(side)
            pool = torch.cuda.graph_pool_handle()
            for name in STAGES:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    getattr(self, "_" + name)()
                self.graphs[name] = graph
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            log.warning("CUDA graph capture of the TDT decoder failed (%s: %s); decoding without graphs",
                        type(e).__name__, e)
            self.graphs = {}
            self.cuda_graphs = False
            torch.cuda.synchronize()

    # --- the four stages (no host reads, no data-dependent shapes) -------------------------------

    def _evaluate(self):
        """(label, duration, score or None) of every row at its current frame."""
        s, blank = self.state, self.blank_id
        f = s.enc[s.rows, s.time.clamp(max=s.enc.shape[1] - 1)]  # (B, J)
        logits = self.joint.combine(f, s.g_proj).float()
        label = logits[:, : blank + 1].argmax(-1)
        dur = self._dur_values[logits[:, blank + 1 :].argmax(-1)]
        score = step_confidence(logits, blank, self.confidence) if self.confidence is not None else None
        return label, dur, score

    def _start(self) -> None:
        s = self.state
        for x in (s.time, s.symbols, s.count):
            x.zero_()
        g, (h, c) = self.predictor(s.sos, None)
        s.g_proj.copy_(self.joint.project_predictor(g[:, 0]))
        s.h.copy_(h)
        s.c.copy_(c)
        if s.blanks is not None:
            s.blanks.reset()
        s.active_any.copy_((s.lengths > 0).any())

    def _before_inner(self) -> None:
        s = self.state
        label, dur, score = self._evaluate()
        s.label.copy_(label)
        s.dur.copy_(dur)
        if score is not None:
            s.conf.copy_(score)
        s.searching.copy_((s.time < s.lengths) & (label == self.blank_id))
        if s.blanks is not None:
            s.blanks.add(s.conf, s.searching)
        s.searching_any.copy_(s.searching.any())

    def _inner(self) -> None:
        """Rows holding a blank skip ahead by its duration and look again."""
        s = self.state
        time, symbols = _advance(s.time, s.symbols, s.label, s.dur, s.searching, self.blank_id, self.max_symbols,
                                 self.looping)
        s.time.copy_(time)
        s.symbols.copy_(symbols)
        searching = s.searching & (s.time < s.lengths)
        label, dur, score = self._evaluate()
        s.label.copy_(torch.where(searching, label, s.label))
        s.dur.copy_(torch.where(searching, dur, s.dur))
        if score is not None:
            s.conf.copy_(torch.where(searching, score, s.conf))
        if s.blanks is not None:
            s.blanks.add(s.conf, searching & (s.label == self.blank_id))
        s.searching.copy_(searching & (s.label == self.blank_id))
        s.searching_any.copy_(s.searching.any())

    def _after_inner(self) -> None:
        """Rows inside their audio emit their label; one prediction-network step for the batch."""
        s = self.state
        emit = s.time < s.lengths
        slot = s.count.clamp(max=s.out_label.shape[1] - 1)
        outputs = [(s.out_label, s.label), (s.out_frame, s.time), (s.out_dur, s.dur), (s.out_conf, s.conf)]
        if s.blanks is not None:
            acc, n = s.blanks.take(emit)
            outputs += [(s.out_blank_acc, acc), (s.out_blank_n, n)]
        for buf, value in outputs:
            buf[s.rows, slot] = torch.where(emit, value, buf[s.rows, slot])
        s.count.add_(emit.long())
        time, symbols = _advance(s.time, s.symbols, s.label, s.dur, emit, self.blank_id, self.max_symbols, self.looping)
        s.time.copy_(time)
        s.symbols.copy_(symbols)
        g, (h, c) = self.predictor(torch.where(emit, s.label, self.blank_id)[:, None], (s.h, s.c))
        keep = emit[None, :, None]
        s.h.copy_(torch.where(keep, h, s.h))
        s.c.copy_(torch.where(keep, c, s.c))
        s.g_proj.copy_(torch.where(emit[:, None], self.joint.project_predictor(g[:, 0]), s.g_proj))
        s.active_any.copy_((s.time < s.lengths).any())

    # --- results ---------------------------------------------------------------------------------

    def _collect(self, b: int) -> list[Hypothesis]:
        """The first `b` rows' buffers -> hypotheses, with one host copy of what was written."""
        s = self.state
        counts = s.count[:b].cpu()
        width = max(1, int(counts.max()))
        label, frame, dur, conf = (x[:b, :width].cpu() for x in (s.out_label, s.out_frame, s.out_dur, s.out_conf))
        if s.blanks is not None:
            acc, n = s.out_blank_acc[:b, :width].cpu(), s.out_blank_n[:b, :width].cpu()
            final_acc, final_n = s.blanks.acc[:b].cpu(), s.blanks.n[:b].cpu()
        out = []
        for i in range(b):
            k = int(counts[i])
            scores: tuple[float, ...] = ()
            if self.confidence is not None:
                values = conf[i, :k].tolist()
                if s.blanks is not None:  # blanks taken at emission k + 1 belong to token k
                    accs = acc[i, 1:k].tolist() + [float(final_acc[i])]
                    ns = n[i, 1:k].tolist() + [int(final_n[i])]
                    values = [with_blanks(v, a, c, self.confidence.aggregation) for v, a, c in zip(values, accs, ns)]
                scores = tuple(values)
            out.append(Hypothesis(tuple(label[i, :k].tolist()), tuple(frame[i, :k].tolist()), tuple(dur[i, :k].tolist()),
                                  scores))
        return out


def decoder_for(m, rule: str, confidence: ConfidenceConfig | None) -> LabelLooping:
    """The model's own LabelLooping for (rule, confidence), with CUDA graphs: made once, kept on the model
    (its state and captured graphs are reused by every later batch). For a model on a CUDA device."""
    cache = m.__dict__.setdefault("_label_looping", {})
    key = (rule, confidence)
    if key not in cache:
        c = m.config
        cache[key] = LabelLooping(m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, rule, confidence,
                                  cuda_graphs=True)
    return cache[key]
