"""Long inputs run the subsampling in blocks: the result must equal the whole-input computation."""
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
