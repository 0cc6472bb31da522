"""Long inputs run the subsampling in blocks: the result must equal the whole-input computation."""
import dataclasses

import pytest
import torch

from model import subsampling
from model.config import preset
from model.subsampling import Subsampling


@pytest.mark.parametrize("block", [8, 24, 64])
@pytest.mark.parametrize("grad", [False, True])
def test_blocked_equals_whole(block, grad, monkeypatch):
    torch.manual_seed(block)
    cfg = preset("tiny").encoder
    sub = Subsampling(80, cfg).double().eval()
    feats = torch.randn(3, 80, 203, dtype=torch.float64)
    lengths = torch.tensor([203, 150, 9])  # ragged, one shorter than a block
    with torch.set_grad_enabled(grad):
        whole, whole_len = sub(feats, lengths)
        monkeypatch.setattr(subsampling, "BLOCK_FRAMES", block)
        blocked, blocked_len = sub(feats, lengths)
    assert torch.equal(whole_len, blocked_len)
    assert blocked.shape == whole.shape
    assert torch.allclose(blocked, whole, rtol=0, atol=1e-12)


def reference_subsampling(sub: Subsampling, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The slow, obvious form: every layer an nn.Conv2d in NCHW, each row's frames past its length zeroed before
    the stack and after every conv (as NeMo's MaskedConvSequential)."""
    x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, n_mels)
    cur = lengths
    mask = lambda x, cur: x * (torch.arange(x.shape[2])[None, :] < cur[:, None])[:, None, :, None].to(x.dtype)
    x = mask(x, cur)
    for layer in sub.layers:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            if layer.stride != (1, 1):
                cur = subsampling.conv_output_lengths(cur, 1)
            x = mask(x, cur)
    b, c, t, f = x.shape
    return sub.linear(x.transpose(1, 2).reshape(b, t, c * f))


@pytest.mark.parametrize("bias", [True, False])
def test_first_conv_is_the_conv_in_channels_last(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=bias).double()
    x = torch.randn(2, 37, 80, dtype=torch.float64)  # odd frame count: the last patch reaches into the padding
    y = subsampling.first_conv(x, conv)
    assert y.shape == (2, 16, 19, 40)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, conv(x[:, None]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,factor", [("dw_striding", 8), ("dw_striding", 4), ("dw_striding", 16), ("striding", 4),
                                         ("striding", 8)])
@pytest.mark.parametrize("grad", [False, True])
def test_subsampling_equals_the_nchw_reference(kind, factor, grad):
    """Inference and training, outputs and gradients: the channels_last stack computes what the layers do in NCHW."""
    torch.manual_seed(factor)
    cfg = preset("tiny").encoder
    sub = Subsampling(64, dataclasses.replace(cfg, subsampling=kind, subsampling_factor=factor)).double()
    feats = torch.randn(3, 64, 161, dtype=torch.float64)
    lengths = torch.tensor([161, 100, 7])
    with torch.set_grad_enabled(grad):
        a = feats.clone().requires_grad_(grad)
        ours, _ = sub(a, lengths)
        b = feats.clone().requires_grad_(grad)
        ref = reference_subsampling(sub, b, lengths)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    if grad:
        ours.square().sum().backward()
        mine = [p.grad.clone() for p in sub.parameters()] + [a.grad]
        sub.zero_grad()
        ref.square().sum().backward()
        theirs = [p.grad for p in sub.parameters()] + [b.grad]
        for g, r in zip(mine, theirs):
            assert torch.allclose(g, r, rtol=0, atol=1e-10)
