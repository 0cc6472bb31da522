"""SpecAugment and the learning-rate schedule, tested directly (they also run inside the Ray Train tests)."""
import math

import pytest
import torch

from pipeline.training.schedule import warmup_cosine
from pipeline.training.spec_augment import SpecAugmentConfig, spec_augment


def test_schedule_warmup_peak_and_floor():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.05) == warmup_cosine(500, 10, 100)
    values = [warmup_cosine(s, 10, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warmup


def test_spec_augment_masks_within_bounds():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 80, 300) + 10.0  # nonzero everywhere, so zeros are masks
    lengths = torch.tensor([300, 200, 100, 50])
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=15, time_masks=3, time_width=0.05)
    out = spec_augment(feats, lengths, cfg, generator=g)
    assert out.shape == feats.shape
    zero = out == 0
    kept = ~zero
    assert torch.equal(out[kept], feats[kept])  # unmasked values untouched
    for b in range(4):
        full_bins = zero[b].all(dim=1).sum().item()  # mel bins masked over all frames
        assert full_bins <= 2 * 15
        masked_frames = zero[b].all(dim=0).nonzero().flatten()
        assert len(masked_frames) <= 3 * max(1, int(lengths[b] * 0.05))
        if len(masked_frames):
            assert masked_frames.max() < lengths[b]  # time masks stay inside the valid frames


def test_spec_augment_disabled_masks_is_identity():
    feats = torch.randn(2, 80, 40)
    out = spec_augment(feats, torch.tensor([40, 20]), SpecAugmentConfig(freq_masks=0, time_masks=0))
    assert torch.equal(out, feats)


def test_train_forward_fused_and_materialised_losses_agree():
    """The training step's fused joint+loss gives the same loss and parameter gradients as building
    the logits with the Joint module and calling tdt_loss (joint in eval mode: no dropout)."""
    import model
    from pipeline.training.config import TrainConfig
    from pipeline.training.loop import TrainForward
    from model.config import preset

    torch.manual_seed(0)
    m = model.ParakeetTDT(preset("tiny", vocab_size=30), tokenizer=None).double()
    m.train()
    m.joint.eval()
    feats = torch.randn(2, m.config.features.n_mels, 120, dtype=torch.float64)
    flen = torch.tensor([120, 90])
    targets = torch.randint(0, 30, (2, 6))
    t_len = torch.tensor([6, 4])
    out = []
    for fused in (True, False):
        net = TrainForward(m, TrainConfig(train="-", output="-", sigma=0.05, fused_loss=fused))
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same encoder dropout masks in both runs
        loss = net(feats, flen, targets, t_len)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = out
    assert la == pytest.approx(lb, rel=1e-10)
    assert ga.keys() == gb.keys() and any(k.startswith("joint.head") for k in ga)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-8, atol=1e-12), k
