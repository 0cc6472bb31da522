"""Fused joint + loss (pipeline/training/joint_loss.py) against materialising the logits with the Joint module and
calling tdt_loss / rnnt_loss: values and gradients for encoder/predictor projections and the head."""
import pytest
import torch

import pipeline.training.joint_loss as joint_loss
from model.config import preset
from model.joint import Joint
from pipeline.training.joint_loss import tdt_joint_loss
from pipeline.training.loss import rnnt_loss, tdt_loss

DURATIONS = [0, 1, 2, 3, 4]


def _setup(dtype, b=3, t=11, u=5, vocab=13, seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny", vocab_size=vocab)
    joint = Joint(cfg).to(dtype).eval()  # combine() applies dropout in training mode
    enc = torch.randn(b, t, cfg.encoder.d_model, dtype=dtype)
    pred = torch.randn(b, u + 1, cfg.predictor.pred_hidden, dtype=dtype)
    targets = torch.randint(0, vocab, (b, u))
    t_len, u_len = torch.tensor([t, t - 3, 4][:b]), torch.tensor([u, 2, 1][:b])
    return cfg, joint, enc, pred, targets, t_len, u_len


def _grads(loss, joint, f, g):
    return torch.autograd.grad(loss, (f, g, joint.head.weight, joint.head.bias))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sigma,reduction", [(0.0, "mean"), (0.05, "sum"), (0.05, "mean_volume")])
def test_fused_equals_materialised(dtype, tol, sigma, reduction, monkeypatch):
    monkeypatch.setattr(joint_loss, "JOINT_SLAB_BYTES", 2000)  # many slabs, some spanning several frames
    cfg, joint, enc, pred, targets, t_len, u_len = _setup(dtype)
    f, g = joint.project_encoder(enc), joint.project_predictor(pred)
    blank = cfg.blank_id
    tok, dur = joint.split(joint.combine(f[:, :, None], g[:, None]))
    want = tdt_loss(tok, dur, targets, t_len, u_len, blank, DURATIONS, sigma=sigma, reduction=reduction)
    got = tdt_joint_loss(f, g, joint.head.weight, joint.head.bias, targets, t_len, u_len, blank, DURATIONS,
                         sigma=sigma, reduction=reduction)
    assert abs(got.item() - want.item()) <= tol * abs(want.item())
    for a, b in zip(_grads(got, joint, f, g), _grads(want, joint, f, g)):
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_fused_rnnt_via_omega_and_zero_duration_gradient():
    cfg, joint, enc, pred, targets, t_len, u_len = _setup(torch.float64)
    f, g = joint.project_encoder(enc), joint.project_predictor(pred)
    tok, _ = joint.split(joint.combine(f[:, :, None], g[:, None]))
    want = rnnt_loss(tok, targets, t_len, u_len, cfg.blank_id)
    got = tdt_joint_loss(f, g, joint.head.weight, joint.head.bias, targets, t_len, u_len, cfg.blank_id, DURATIONS, omega=1.0)
    assert torch.allclose(got, want, rtol=1e-10)
    gw = torch.autograd.grad(got, joint.head.weight)[0]
    assert gw[-len(DURATIONS):].abs().max() == 0 and gw[: -len(DURATIONS)].abs().max() > 0


def test_fused_dropout_uses_one_mask_in_forward_and_backward(monkeypatch):
    """With dropout, the backward must see the forward's mask: compare against the logits built from
    the very masks the fused path draws, slab by slab, and check the gradient with gradcheck."""
    monkeypatch.setattr(joint_loss, "JOINT_SLAB_BYTES", 3000)
    cfg, joint, enc, pred, targets, t_len, u_len = _setup(torch.float64, b=2, t=6, u=3)
    f = joint.project_encoder(enc).detach().requires_grad_()
    g = joint.project_predictor(pred).detach().requires_grad_()
    w, bias = joint.head.weight, joint.head.bias
    seed, p = 1234, 0.3
    fn = lambda f_, g_, w_: joint_loss._JointLoss.apply(  # noqa: E731
        f_, g_, w_, bias, targets, t_len, u_len, cfg.blank_id, tuple(DURATIONS), 0.0, False, p, seed)
    hidden = torch.zeros(2, 6, 4, f.shape[-1], dtype=torch.float64)
    for k, (i, ts) in enumerate(joint_loss._slabs(2, 6, 4, w.shape[0])):
        _, keep = joint_loss._hidden(f.detach(), g.detach(), i, ts, p, seed, k)
        assert keep is not None and (keep == 0).any()
        hidden[i, ts] = keep
    logits = torch.nn.functional.linear(torch.relu(f[:, :, None] + g[:, None]) * hidden, w, bias)
    tok, dur = joint.split(logits)
    want = tdt_loss(tok, dur, targets, t_len, u_len, cfg.blank_id, DURATIONS, reduction="none")
    got = fn(f, g, w)
    assert torch.allclose(got, want, rtol=1e-12)
    assert torch.autograd.gradcheck(fn, (f, g, w))


def test_fused_arguments_are_checked():
    cfg, joint, enc, pred, targets, t_len, u_len = _setup(torch.float32)
    f, g = joint.project_encoder(enc), joint.project_predictor(pred)
    with pytest.raises(ValueError, match="joint width"):
        tdt_joint_loss(f[..., :-1], g, joint.head.weight, joint.head.bias, targets, t_len, u_len, cfg.blank_id, DURATIONS)
    with pytest.raises(ValueError, match="dropout"):
        tdt_joint_loss(f, g, joint.head.weight, joint.head.bias, targets, t_len, u_len, cfg.blank_id, DURATIONS, dropout=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        tdt_joint_loss(f, g, joint.head.weight, joint.head.bias, targets, t_len + 5, u_len, cfg.blank_id, DURATIONS)


def test_fused_under_autocast_recomputes_the_same_logits():
    """Under bf16 autocast (the GPU training path; CPU autocast here) the backward recomputes the logits
    in the forward's precision: dW equals dz^T h with dz from the bf16 logits (float32 matmul), not
    from float32 logits (which differ by more than the tolerance: the check can fail)."""
    cfg, joint, enc, pred, targets, t_len, u_len = _setup(torch.float32)
    f, g = joint.project_encoder(enc).detach(), joint.project_predictor(pred).detach()
    w, bias = joint.head.weight, joint.head.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tdt_joint_loss(f, g, w, bias, targets, t_len, u_len, cfg.blank_id, DURATIONS)
    gw_got = torch.autograd.grad(got, w)[0]
    h = torch.relu(f[:, :, None] + g[:, None])

    def reference(logits):
        z = logits.float().detach().requires_grad_()
        tok, dur = joint.split(z)
        loss = tdt_loss(tok, dur, targets, t_len, u_len, cfg.blank_id, DURATIONS)
        dz = torch.autograd.grad(loss, z)[0]
        return loss.item(), dz.reshape(-1, dz.shape[-1]).t() @ h.reshape(-1, h.shape[-1])

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = torch.nn.functional.linear(h, w, bias)
    want_loss, want_gw = reference(bf16_logits)
    _, fp32_gw = reference(torch.nn.functional.linear(h, w, bias))
    tol = 1e-5 * want_gw.abs().max()
    assert abs(got.item() - want_loss) <= 1e-5 * abs(want_loss)
    assert (gw_got - want_gw).abs().max() <= tol
    assert (fp32_gw - want_gw).abs().max() > tol
