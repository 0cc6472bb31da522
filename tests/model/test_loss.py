"""TDT loss: value and gradient against transformers' tdt_loss and NeMo's TDTLossPytorch fixtures,
gradcheck in float64, infeasible samples."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.loss import REDUCTIONS, tdt_loss

ref = pytest.importorskip("transformers.loss.loss_tdt").tdt_loss
DATA = Path(__file__).resolve().parents[1] / "data" / "nemo" / "tdt_loss.npz"


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
    tok, dur, targets, t_len, u_len = _case(1, 2, 5, 2, 3, (0, 1, 2), dtype=torch.float64)
    tok.requires_grad_()
    dur.requires_grad_()
    f = lambda a, b: tdt_loss(a, b, targets, t_len, u_len, 3, [0, 1, 2], sigma=0.05, reduction="none")  # noqa: E731
    # the loss is computed from float32 log-normalisers: check at float32-appropriate tolerances
    assert torch.autograd.gradcheck(f, (tok, dur), eps=1e-3, atol=2e-3, rtol=1e-2)


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
