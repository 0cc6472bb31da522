"""Batched greedy TDT decoding against slow, obviously correct per-utterance references: line-by-line
ports of NeMo 3.0's `GreedyTDTInfer._greedy_decode` (strategy greedy) and of
`GreedyBatchedTDTLabelLoopingComputer.torch_impl` run on one utterance (strategy greedy_batch)."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model import decoding
from model.decoding import Hypothesis, greedy_tdt
from tests.model.helpers import tiny_model


def reference_greedy(enc, length, predictor, joint, blank, durations, max_symbols):
    """NeMo's bs1 loop, one utterance: enc (T, D)."""
    tokens, frames, durs = [], [], []
    last, state = blank, None
    g, hidden = predictor(torch.tensor([[last]]), state)
    time_idx = 0
    while time_idx < length:
        f = joint.project_encoder(enc[time_idx])
        symbols_added, need_loop = 0, True
        while need_loop and symbols_added < max_symbols:
            g, hidden_prime = predictor(torch.tensor([[last]]), state)
            logits = joint.combine(f, joint.project_predictor(g[0, 0])).float()
            k = int(logits[: blank + 1].argmax())
            skip = durations[int(logits[blank + 1 :].argmax())]
            if k != blank:
                tokens.append(k)
                frames.append(time_idx)
                durs.append(skip)
                state, last = hidden_prime, k
            symbols_added += 1
            time_idx += skip
            need_loop = skip == 0
        if symbols_added == max_symbols:
            time_idx += 1
    return Hypothesis(tuple(tokens), tuple(frames), tuple(durs))


def reference_label_looping(enc, length, predictor, joint, blank, durations, max_symbols):
    """NeMo's label looping (tdt_label_looping.py torch_impl), one utterance: enc (T, D)."""
    def step(t, g):
        logits = joint.combine(joint.project_encoder(enc[t]), joint.project_predictor(g[0, 0])).float()
        k, d = int(logits[: blank + 1].argmax()), durations[int(logits[blank + 1 :].argmax())]
        return k, (1 if k == blank and d == 0 else d)  # "for blank labels force duration >= 1"

    tokens, frames, durs = [], [], []
    g, state = predictor(torch.tensor([[blank]]), None)  # <SOS> = blank
    t, last_nb_timestamp, lasts = 0, -1, 0
    while t < length:
        k, d = step(t, g)  # stage 1.1
        t_label, t = t, t + d
        while k == blank and t < length:  # stage 1.2: skip blanks until a label or the end
            k, d = step(t, g)
            t_label, t = t, t + d
        if k == blank:
            break
        tokens.append(k)
        frames.append(t_label)
        durs.append(d)
        lasts = lasts + 1 if last_nb_timestamp == t_label else 1  # batched_hyps.add_results_masked_
        last_nb_timestamp = t_label
        g, state = predictor(torch.tensor([[k]]), state)  # stage 3
        if lasts >= max_symbols and last_nb_timestamp == t:  # stage 4: force blank
            t += 1
    return Hypothesis(tuple(tokens), tuple(frames), tuple(durs))


REFERENCES = {"greedy": reference_greedy, "greedy_batch": reference_label_looping}
RULES = sorted(REFERENCES)


class ScriptedPredictor(nn.Module):
    """Prediction 'network' whose output is a one-hot of how many labels it has consumed."""

    def __init__(self, blank, width=64):
        super().__init__()
        self.blank, self.width = blank, width

    def forward(self, tokens, state=None):
        b = tokens.shape[0]
        count = torch.zeros(1, b, 1) if state is None else state[0]
        count = count + (tokens[:, -1] != self.blank).float().view(1, b, 1)
        out = nn.functional.one_hot(count[0, :, 0].long().clamp(max=self.width - 1), self.width).float()
        return out[:, None, :], (count, count.clone())


class ScriptedJoint(nn.Module):
    """Joint that returns table[t, u] for encoder frame t (one-hot input) and label count u."""

    def __init__(self, table):  # table (T, U, V + 1 + n_dur)
        super().__init__()
        self.table = table

    def project_encoder(self, enc):
        return enc  # one-hot frame index

    def project_predictor(self, pred):
        return pred  # one-hot label count

    def combine(self, f, g):
        t = f.argmax(-1)
        u = g.argmax(-1)
        return self.table[t, u]


def scripted(T, U, V, durations, script, b=1):
    """script: {(t, u): (label, duration_index)}; default is blank with duration index 1."""
    n_dur = len(durations)
    table = torch.zeros(T, 64, V + 1 + n_dur)
    table[:, :, V] = 5.0  # blank
    table[:, :, V + 1 + 1] = 5.0  # duration index 1
    for (t, u), (label, di) in script.items():
        table[t, u, :] = 0.0
        table[t, u, label] = 5.0
        table[t, u, V + 1 + di] = 5.0
    enc = torch.eye(T)[None].repeat(b, 1, 1)  # (B, T, T) one-hot frames
    return enc, ScriptedPredictor(V), ScriptedJoint(table)


def run_both(enc, lengths, pred, joint, blank, durations, max_symbols=10, compact=None, rule="greedy_batch"):
    batched = greedy_tdt(enc, lengths, pred, joint, blank, durations, max_symbols, compact=compact, rule=rule)
    if compact is None:  # both inner-loop variants (compact rows / fixed shapes) give the same result
        assert greedy_tdt(enc, lengths, pred, joint, blank, durations, max_symbols, compact=False, rule=rule) == batched
    reference = REFERENCES[rule]
    refs = [reference(enc[i], int(lengths[i]), pred, joint, blank, durations, max_symbols) for i in range(len(enc))]
    return batched, refs


DUR = (0, 1, 2, 3, 4)


@pytest.mark.parametrize("rule", RULES)
def test_token_with_zero_duration_stays_on_frame(rule):
    enc, p, j = scripted(6, 4, 5, DUR, {(0, 0): (1, 0), (0, 1): (2, 2), (2, 2): (3, 1)})
    (h,), (r,) = run_both(enc, torch.tensor([6]), p, j, 5, DUR, rule=rule)
    assert h == r
    assert h.token_ids == (1, 2, 3) and h.frames == (0, 0, 2) and h.durations == (0, 2, 1)


@pytest.mark.parametrize("rule", RULES)
def test_blank_with_zero_duration_advances_one_frame(rule):
    enc, p, j = scripted(5, 4, 5, DUR, {(1, 0): (5, 0), (2, 0): (4, 1)})  # label 5 = blank, duration 0
    (h,), (r,) = run_both(enc, torch.tensor([5]), p, j, 5, DUR, rule=rule)
    assert h == r and h.token_ids == (4,) and h.frames == (2,)


def _guard_script():
    # every (frame 0, u) emits label 1 with duration 0, except the 3rd symbol, which has duration 2;
    # (frame 2, u = 3) and (frame 3, u = 3) emit label 2 with duration 1
    script = {(0, u): (1, 0) for u in range(10)}
    script[(0, 2)] = (1, 2)
    script[(2, 3)] = (2, 1)
    script[(3, 3)] = (2, 1)
    return scripted(8, 10, 5, DUR, script)


def test_max_symbols_guard_greedy_adds_a_frame_after_a_moving_label():
    """GreedyTDTInfer: the 3rd evaluation at frame 0 reaches max_symbols=3, so time moves 2 + 1."""
    enc, p, j = _guard_script()
    (h,), (r,) = run_both(enc, torch.tensor([8]), p, j, 5, DUR, max_symbols=3, rule="greedy")
    assert h == r
    assert h == Hypothesis((1, 1, 1, 2), (0, 0, 0, 3), (0, 0, 2, 1))


def test_max_symbols_guard_label_looping_trusts_a_moving_label():
    """Label looping: the 3rd label's duration 2 already moved time, so nothing is forced (frame 2)."""
    enc, p, j = _guard_script()
    (h,), (r,) = run_both(enc, torch.tensor([8]), p, j, 5, DUR, max_symbols=3, rule="greedy_batch")
    assert h == r
    assert h == Hypothesis((1, 1, 1, 2), (0, 0, 0, 2), (0, 0, 2, 1))


def test_blanks_do_not_count_toward_label_loopings_limit():
    """label(d=0), label(d=0), blank(d=1) at one frame with max_symbols=3: GreedyTDTInfer counts the
    blank as the 3rd evaluation and adds a frame (next label at frame 2); label looping does not (frame 1)."""
    script = {(0, 0): (1, 0), (0, 1): (1, 0), (1, 2): (3, 1), (2, 2): (3, 1)}  # (0, 2) is blank, duration 1
    enc, p, j = scripted(4, 4, 5, DUR, script)
    (g,), (rg,) = run_both(enc, torch.tensor([4]), p, j, 5, DUR, max_symbols=3, rule="greedy")
    (ll,), (rl,) = run_both(enc, torch.tensor([4]), p, j, 5, DUR, max_symbols=3, rule="greedy_batch")
    assert g == rg and ll == rl
    assert g.frames == (0, 0, 2) and ll.frames == (0, 0, 1)


@pytest.mark.parametrize("rule", RULES)
def test_guard_on_endless_zero_duration_labels(rule):
    script = {(t, u): (2, 0) for t in range(4) for u in range(40)}
    enc, p, j = scripted(4, 40, 5, DUR, script)
    (h,), (r,) = run_both(enc, torch.tensor([4]), p, j, 5, DUR, max_symbols=10, rule=rule)
    assert h == r and len(h.token_ids) == 40 and h.frames == tuple(t for t in range(4) for _ in range(10))


@pytest.mark.parametrize("rule", RULES)
def test_empty_and_batch_of_different_lengths(rule):
    enc, p, j = scripted(12, 8, 5, DUR, {(0, 0): (1, 3), (3, 1): (2, 0), (3, 2): (3, 4), (9, 3): (4, 1)}, b=4)
    lengths = torch.tensor([12, 0, 4, 1])
    hs, refs = run_both(enc, lengths, p, j, 5, DUR, rule=rule)
    assert hs == refs
    assert hs[1] == Hypothesis((), (), ())
    assert hs[0].token_ids == (1, 2, 3, 4)
    assert hs[2].token_ids == (1, 2, 3) and hs[3].token_ids == (1,)


def test_all_rows_empty():
    enc, p, j = scripted(3, 2, 5, DUR, {}, b=2)
    assert greedy_tdt(enc[:, :0], torch.tensor([0, 0]), p, j, 5, DUR) == [Hypothesis((), (), ())] * 2


@pytest.mark.parametrize("rule", RULES)
def test_other_durations_list(rule):
    durs = (1, 2, 4, 8)
    enc, p, j = scripted(20, 4, 5, durs, {(0, 0): (1, 3), (8, 1): (2, 2), (12, 2): (3, 0)})
    (h,), (r,) = run_both(enc, torch.tensor([20]), p, j, 5, durs, rule=rule)
    assert h == r and h.frames == (0, 8, 12) and h.durations == (8, 4, 1)


def _rows_on_own_frames(b, t):
    """enc (B, T, B*T): row i's frame f is one-hot at table row i*T + f, so rows follow their own scripts."""
    enc = torch.zeros(b, t, b * t)
    for i in range(b):
        enc[i, torch.arange(t), i * t + torch.arange(t)] = 1.0
    return enc


@pytest.mark.parametrize("rule", RULES)
def test_rows_that_found_a_label_keep_their_own_duration(rule):
    """The NeMo 3.0 batched-CPU trap: row 0 finds each label at once while row 1 skips blanks for
    several inner iterations; row 0's recorded durations must stay its own."""
    t = 12
    script = {(0, 0): (1, 3), (3, 1): (2, 2), (5, 2): (3, 1), (t + 6, 0): (4, 2), (t + 8, 1): (2, 0), (t + 8, 2): (1, 4)}
    _, p, j = scripted(2 * t, 8, 5, DUR, script)
    enc = _rows_on_own_frames(2, t)
    hs, refs = run_both(enc, torch.tensor([t, t]), p, j, 5, DUR, rule=rule)
    assert hs == refs
    assert hs[0] == Hypothesis((1, 2, 3), (0, 3, 5), (3, 2, 1))
    assert hs[1] == Hypothesis((4, 2, 1), (6, 8, 8), (2, 0, 4))


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.integers(1, 12),
    b=st.integers(1, 5),
    durations=st.sampled_from([DUR, (1, 2, 4, 8), (0, 1), (0, 2, 5), (1,)]),
    max_symbols=st.integers(1, 4),
    blank_bias=st.floats(-2.0, 4.0),
    zero_bias=st.floats(-2.0, 4.0),
    window=st.sampled_from([(1, 1), (2, 2), (5, 3), (32, 8), (64, 16)]),
)
@pytest.mark.parametrize("rule", RULES)
def test_random_scripts_batched_equals_reference(rule, seed, t, b, durations, max_symbols, blank_bias, zero_bias, window):
    """Random joint tables (per row, frame and label count): blank stalls, zero-duration chains, guards;
    the CPU path's look-ahead window (rows x frames budget, max frames) from one frame to past the audio."""
    saved = decoding.WINDOW_ROWS, decoding.MAX_WINDOW
    decoding.WINDOW_ROWS, decoding.MAX_WINDOW = window
    try:
        _random_script_case(seed, t, b, durations, max_symbols, blank_bias, zero_bias, rule)
    finally:
        decoding.WINDOW_ROWS, decoding.MAX_WINDOW = saved


def _random_script_case(seed, t, b, durations, max_symbols, blank_bias, zero_bias, rule):
    g = torch.Generator().manual_seed(seed)
    v = 5
    table = torch.randn(b * t, 64, v + 1 + len(durations), generator=g) * 2
    table[:, :, v] += blank_bias
    if durations[0] == 0:
        table[:, :, v + 1] += zero_bias
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    enc = _rows_on_own_frames(b, t)
    hs, refs = run_both(enc, lengths, ScriptedPredictor(v), ScriptedJoint(table), v, durations, max_symbols, rule=rule)
    assert hs == refs


def test_bad_arguments_name_the_culprit():
    enc, p, j = scripted(3, 2, 5, DUR, {})
    with pytest.raises(ValueError, match="encoder_lengths"):
        greedy_tdt(enc, torch.tensor([3, 3]), p, j, 5, DUR)
    with pytest.raises(ValueError, match="durations"):
        greedy_tdt(enc, torch.tensor([3]), p, j, 5, ())
    with pytest.raises(ValueError, match="max_symbols_per_step"):
        greedy_tdt(enc, torch.tensor([3]), p, j, 5, DUR, 0)
    with pytest.raises(ValueError, match="encoder_out"):
        greedy_tdt(enc[0], torch.tensor([3]), p, j, 5, DUR)
    with pytest.raises(ValueError, match="rule='beam'"):
        greedy_tdt(enc, torch.tensor([3]), p, j, 5, DUR, rule="beam")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tok"), seed=3)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 5),
    max_symbols=st.sampled_from([1, 2, 10]),
    blank_bias=st.floats(-3.0, 3.0),
    zero_bias=st.floats(-2.0, 6.0),
)
@pytest.mark.parametrize("rule", RULES)
def test_random_tiny_model_batched_equals_reference(tiny, rule, seed, b, max_symbols, blank_bias, zero_bias):
    """Real LSTM state and joint; biases make blank stalls, zero-duration chains and guards common."""
    g = torch.Generator().manual_seed(seed)
    t = 20
    enc = torch.randn(b, t, tiny.config.encoder.d_model, generator=g) * 3
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    blank = tiny.config.blank_id
    joint = copy.deepcopy(tiny.joint)
    with torch.no_grad():
        joint.head.bias[blank] += blank_bias
        joint.head.bias[blank + 1] += zero_bias  # durations[0] == 0
        hs, refs = run_both(enc, lengths, tiny.predictor, joint, blank, tiny.config.durations, max_symbols, rule=rule)
    assert hs == refs
