"""TDT and RNN-T losses: value and gradient against transformers' tdt_loss, NeMo's TDTLossPytorch fixtures
and an explicit recursion over paths; gradcheck in float64; the CPU kernel against the vectorised lattice;
omega; infeasible samples."""
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.training.lattice as lattice_mod
from pipeline.training.loss import REDUCTIONS, rnnt_loss, tdt_loss

ref = pytest.importorskip("transformers.loss.loss_tdt").tdt_loss
DATA = Path(__file__).resolve().parents[2] / "data" / "nemo" / "tdt_loss.npz"


def _case(seed, b, t, u, v, durations, ragged=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(b, t, u + 1, v + 1, generator=g, dtype=dtype) * 2
    dur = torch.randn(b, t, u + 1, len(durations), generator=g, dtype=dtype)
    targets = torch.randint(0, v, (b, u), generator=g)
    t_len = torch.randint(max(1, t // 2), t + 1, (b,), generator=g) if ragged else torch.full((b,), t)
    u_len = torch.randint(1 if u else 0, u + 1, (b,), generator=g) if ragged else torch.full((b,), u)
    t_len[0], u_len[0] = t, u  # one row uses the full lattice
    return tok, dur, targets, t_len, u_len


def _both(tok, dur, targets, t_len, u_len, blank, durations, sigma, reduction):
    out = []
    for fn in (tdt_loss, ref):
        a, b = tok.clone().requires_grad_(), dur.clone().requires_grad_()
        loss = fn(a, b, targets, t_len, u_len, blank, durations, sigma=sigma, reduction=reduction)
        ga, gb = torch.autograd.grad(loss.sum(), (a, b))
        out.append((loss.detach(), ga, gb))
    return out


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sigma", [0.0, 0.05])
@pytest.mark.parametrize("durations", [(0, 1, 2, 3, 4), (0, 1, 2), (1, 2, 4, 8)])
def test_matches_transformers(reduction, sigma, durations):
    tok, dur, targets, t_len, u_len = _case(0, 3, 14, 5, 9, durations)
    (la, ga, da), (lb, gb, db) = _both(tok, dur, targets, t_len, u_len, 9, list(durations), sigma, reduction)
    finite = torch.isfinite(lb)
    assert torch.equal(torch.isfinite(la), finite)
    assert _rel(la[finite], lb[finite]) <= 1e-5
    if finite.all():
        # transformers' autograd yields NaN gradients where every arc into a state is impossible
        # (durations without 0); ours are finite everywhere and equal wherever its are defined
        assert not ga.isnan().any() and not da.isnan().any()
        assert (gb.isnan().any() or db.isnan().any()) == (0 not in durations)
        ok_g, ok_d = ~gb.isnan(), ~db.isnan()
        assert _rel(ga[ok_g], gb[ok_g]) <= 1e-5 and _rel(da[ok_d], db[ok_d]) <= 1e-5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), t=st.integers(1, 12), u=st.integers(0, 6),
       v=st.integers(1, 8), sigma=st.sampled_from([0.0, 0.05]), reduction=st.sampled_from(["none", "sum", "mean_batch", "mean_volume"]))
def test_random_shapes_match_transformers(seed, b, t, u, v, sigma, reduction):
    tok, dur, targets, t_len, u_len = _case(seed, b, t, u, v, (0, 1, 2, 3, 4))
    (la, ga, da), (lb, gb, db) = _both(tok, dur, targets, t_len, u_len, v, [0, 1, 2, 3, 4], sigma, reduction)
    assert torch.equal(torch.isfinite(la), torch.isfinite(lb))
    if torch.isfinite(lb).all():
        assert _rel(la, lb) <= 1e-5 and _rel(ga, gb) <= 1e-5 and _rel(da, db) <= 1e-5


def test_matches_nemo_fixtures():
    data = np.load(DATA)
    for c in range(4):
        k = lambda name: torch.from_numpy(data[f"case{c}_{name}"])  # noqa: E731
        acts, durations = k("acts"), k("durations").tolist()
        n = len(durations)
        tok = acts[..., :-n].clone().requires_grad_()
        dur = acts[..., -n:].clone().requires_grad_()
        loss = tdt_loss(tok, dur, k("labels"), k("act_lens"), k("label_lens"), int(k("blank")), durations,
                        sigma=float(k("sigma")), reduction="none")
        loss.sum().backward()
        assert _rel(loss.double(), k("loss")) <= 1e-5
        grad = torch.cat([tok.grad, dur.grad], dim=-1)
        assert _rel(grad, k("grad")) <= 1e-5


def test_gradcheck_float64():
    # float64 logits are normalised in float64: the analytic gradient passes gradcheck at its defaults
    tok, dur, targets, t_len, u_len = _case(1, 2, 5, 2, 3, (0, 1, 2), dtype=torch.float64)
    tok.requires_grad_()
    dur.requires_grad_()
    f = lambda a, b: tdt_loss(a, b, targets, t_len, u_len, 3, [0, 1, 2], sigma=0.05, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(f, (tok, dur))
    g = lambda a: rnnt_loss(a, targets, t_len, u_len, 3, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(g, (tok,))


def _paths_logp(lp_tok, lp_dur, y, T, U, blank, durations, sigma, rnnt):
    """log p(y|x) by explicit recursion over every path (slow, obvious): the reference for both lattices."""
    @functools.lru_cache(maxsize=None)
    def finish(t, u):  # log prob of completing from state (t, u)
        terms = []
        for i, d in enumerate(durations):
            if rnnt:
                arcs = [("blank", 1, 0.0)] if d == 1 else [("label", 0, 0.0)] if d == 0 else []
            else:
                arcs = [("blank", d, lp_dur[t][u][i]), ("label", d, lp_dur[t][u][i])]
            for kind, dd, w_dur in arcs:
                s = 0.0 if rnnt else sigma
                if kind == "blank" and dd > 0:
                    w = lp_tok[t][u][blank] - s + w_dur
                    if t + dd == T and u == U:
                        terms.append(w)
                    elif t + dd < T:
                        terms.append(w + finish(t + dd, u))
                if kind == "label" and u < U and t + dd < T:
                    terms.append(lp_tok[t][u][y[u]] - s + w_dur + finish(t + dd, u + 1))
        terms = [x for x in terms if x != -math.inf]
        if not terms:
            return -math.inf
        m = max(terms)
        return m + math.log(sum(math.exp(x - m) for x in terms))
    return finish(0, 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), t=st.integers(1, 7), u=st.integers(0, 4),
       durations=st.sampled_from([(0, 1, 2, 3, 4), (0, 1), (1, 3), (0, 2, 5)]), sigma=st.sampled_from([0.0, 0.05]))
def test_values_match_path_recursion(seed, b, t, u, durations, sigma):
    tok, dur, targets, t_len, u_len = _case(seed, b, t, u, 5, durations, dtype=torch.float64)
    tdt = tdt_loss(tok, dur, targets, t_len, u_len, 5, list(durations), sigma=sigma, reduction="none")
    rnnt = rnnt_loss(tok, targets, t_len, u_len, 5, reduction="none")
    lp_tok, lp_dur = torch.log_softmax(tok, -1).tolist(), torch.log_softmax(dur, -1).tolist()
    for i in range(b):
        y, T, U = targets[i].tolist(), int(t_len[i]), int(u_len[i])
        want_tdt = -_paths_logp(lp_tok[i], lp_dur[i], y, T, U, 5, durations, sigma, rnnt=False)
        want_rnnt = -_paths_logp(lp_tok[i], None, y, T, U, 5, (0, 1), 0.0, rnnt=True)
        for got, want in ((tdt[i].item(), want_tdt), (rnnt[i].item(), want_rnnt)):
            assert (math.isinf(got) and math.isinf(want)) or abs(got - want) <= 1e-5 * max(1.0, abs(want))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), t=st.integers(1, 16), u=st.integers(0, 7),
       durations=st.sampled_from([(0, 1, 2, 3, 4), (1, 2, 4, 8), (0, 1)]))
def test_cpu_kernel_matches_vectorised_lattice(seed, b, t, u, durations):
    """The numba kernel (CPU) and the vectorised PyTorch lattice (other devices) agree, infeasible rows included."""
    g = torch.Generator().manual_seed(seed)
    wb = torch.log_softmax(torch.randn(b, t, u + 1, len(durations), generator=g, dtype=torch.float64), -1) - 1.0
    wl = torch.log_softmax(torch.randn(b, t, u + 1, len(durations), generator=g, dtype=torch.float64), -1) - 1.0
    t_len = torch.randint(1, t + 1, (b,), generator=g)
    u_len = torch.randint(0, u + 1, (b,), generator=g)
    lp_a, ob_a, ol_a = lattice_mod._lattice_cpu(wb, wl, list(durations), t_len, u_len, True)
    lp_b, ob_b, ol_b = lattice_mod._lattice_torch(wb, wl, list(durations), t_len, u_len, True)
    assert torch.equal(torch.isinf(lp_a), torch.isinf(lp_b))
    ok = torch.isfinite(lp_b)
    assert torch.allclose(lp_a[ok], lp_b[ok], rtol=1e-10, atol=1e-10)
    assert torch.allclose(ob_a, ob_b, atol=1e-10) and torch.allclose(ol_a, ol_b, atol=1e-10)


def test_omega_samples_the_rnnt_loss():
    tok, dur, targets, t_len, u_len = _case(4, 3, 10, 3, 6, (0, 1, 2, 3, 4))
    args = (targets, t_len, u_len, 6, [0, 1, 2, 3, 4])
    a, d = tok.clone().requires_grad_(), dur.clone().requires_grad_()
    always = tdt_loss(a, d, *args, omega=1.0, reduction="none")
    always.sum().backward()
    assert torch.allclose(always, rnnt_loss(tok, targets, t_len, u_len, 6, reduction="none"))
    assert d.grad.abs().max() == 0 and a.grad.abs().max() > 0
    assert torch.equal(tdt_loss(tok, dur, *args, omega=0.0, reduction="none"), tdt_loss(tok, dur, *args, reduction="none"))
    # omega = 0.5: each call draws once from the generator; over many calls about half are RNN-T
    gen = torch.Generator().manual_seed(0)
    plain = tdt_loss(tok, dur, *args, reduction="sum")
    picks = [not torch.equal(tdt_loss(tok, dur, *args, reduction="sum", omega=0.5, generator=gen), plain) for _ in range(200)]
    assert 70 < sum(picks) < 130
    with pytest.raises(ValueError, match="omega"):
        tdt_loss(tok, dur, *args, omega=1.5)


def test_infeasible_sample_is_inf_with_zero_gradient():
    # durations (2, 4) can never end exactly at an odd T = 5 with one label: no path exists
    tok, dur, targets, _, _ = _case(2, 2, 5, 1, 4, (2, 4), ragged=False)
    t_len, u_len = torch.tensor([5, 4]), torch.tensor([1, 1])
    a, b = tok.clone().requires_grad_(), dur.clone().requires_grad_()
    loss = tdt_loss(a, b, targets, t_len, u_len, 4, [2, 4], reduction="none")
    assert torch.isinf(loss[0]) and torch.isfinite(loss[1])
    loss[torch.isfinite(loss)].sum().backward()
    assert a.grad[0].abs().max() == 0 and b.grad[0].abs().max() == 0
    assert a.grad[1].abs().max() > 0


def test_bad_arguments_are_named():
    tok, dur, targets, t_len, u_len = _case(3, 2, 4, 2, 3, (0, 1, 2))
    with pytest.raises(ValueError, match="reduction"):
        tdt_loss(tok, dur, targets, t_len, u_len, 3, [0, 1, 2], reduction="avg")
    with pytest.raises(ValueError, match="duration_logits"):
        tdt_loss(tok, dur[..., :2], targets, t_len, u_len, 3, [0, 1, 2])
