"""FastConformer subsampling: 8x (or 4x, 16x) time reduction with stride-2 2-D convs.

`dw_striding` (every Parakeet checkpoint): a full conv, then depthwise-separable stages; `striding`
(NeMo ConformerEncoder's default): full convs throughout."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import EncoderConfig

KERNEL, STRIDE, PAD = 3, 2, 1  # every conv in the stack
BLOCK_FRAMES = 4000  # feature frames (40 s) per block for long inputs; a multiple of 8
BLOCK_CONTEXT = 16  # real frames each side of a block (the receptive field is +-7; a multiple of 8)


def conv_output_lengths(lengths: torch.Tensor, n_convs: int) -> torch.Tensor:
    """Frames left after `n_convs` stride-2 convs (kernel 3, padding 1): floor((L + 2 - 3) / 2) + 1 each."""
    for _ in range(n_convs):
        lengths = torch.div(lengths + 2 * PAD - KERNEL, STRIDE, rounding_mode="floor") + 1
    return lengths


class Subsampling(nn.Module):
    """`forward(features (B, n_mels, F), lengths (B,)) -> (x (B, T, d_model), lengths (B,))`.

    Layer indices follow NeMo / transformers: conv 0 (1 -> C, stride 2), ReLU, then per further
    stage a depthwise stride-2 conv, a pointwise conv and a ReLU (dw_striding) or a full stride-2
    conv and a ReLU (striding). Time steps past each row's length are zeroed in the input and after
    every conv, as NeMo 3.0 (MaskedConvSequential) and transformers do, so a row's output depends
    neither on how much padding its batch has nor on the padding's value (NeMo's pad_value).
    """

    def __init__(self, n_mels: int, cfg: EncoderConfig):
        super().__init__()
        self.n_stages = int(math.log2(cfg.subsampling_factor))
        c = cfg.subsampling_conv_channels
        layers: list[nn.Module] = [nn.Conv2d(1, c, KERNEL, STRIDE, PAD), nn.ReLU()]
        for _ in range(self.n_stages - 1):
            if cfg.subsampling == "dw_striding":
                layers += [nn.Conv2d(c, c, KERNEL, STRIDE, PAD, groups=c), nn.Conv2d(c, c, 1), nn.ReLU()]
            else:  # striding
                layers += [nn.Conv2d(c, c, KERNEL, STRIDE, PAD), nn.ReLU()]
        self.layers = nn.ModuleList(layers)
        freq = n_mels
        for _ in range(self.n_stages):
            freq = (freq + 2 * PAD - KERNEL) // STRIDE + 1
        self.linear = nn.Linear(c * freq, cfg.d_model)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = features.shape[-1]
        out_lengths = conv_output_lengths(lengths, self.n_stages)
        if total <= BLOCK_FRAMES + 2 * BLOCK_CONTEXT:
            return self._block(features, lengths, 0), out_lengths
        # Long input: blocks of BLOCK_FRAMES feature frames with BLOCK_CONTEXT frames of real context on
        # each side. An output frame j sees input frames 8j - 7 .. 8j + 7, so the outputs a block keeps
        # never see its edges: the result equals the whole-input computation, while the (B, C, F/2, n_mels/2)
        # first-conv maps (5.9 GB for an hour in bf16) exist one block at a time.
        step = 2 ** self.n_stages
        out_total = int(conv_output_lengths(torch.tensor([total]), self.n_stages)[0])
        pieces = []
        for a in range(0, total, BLOCK_FRAMES):
            start = max(0, a - BLOCK_CONTEXT)
            y = self._block(features[..., start : min(total, a + BLOCK_FRAMES + BLOCK_CONTEXT)], lengths, start)
            first = a // step - start // step  # local index of global output a / step
            count = min(BLOCK_FRAMES // step, out_total - a // step)
            pieces.append(y[:, first : first + count])
        return torch.cat(pieces, dim=1), out_lengths

    def _block(self, features: torch.Tensor, lengths: torch.Tensor, offset: int) -> torch.Tensor:
        """Feature frames [offset, offset + F) of the batch -> (B, T', d_model); offset is a multiple of 8.
        Masks use global frame indices, so a block masks exactly what the whole input would."""
        x = features.transpose(1, 2).unsqueeze(1)  # (B, 1, F, n_mels)
        cur, off = lengths, offset
        inplace = not torch.is_grad_enabled()  # inference: mask and ReLU in place (these maps are large)
        frames = torch.arange(off, off + x.shape[2], device=x.device)
        x = x * (frames[None, :] < cur[:, None])[:, None, :, None].to(x.dtype)  # input frames past the length
        for layer in self.layers:
            if inplace and isinstance(layer, nn.ReLU):
                x = x.relu_()
                continue
            x = layer(x)
            if isinstance(layer, nn.Conv2d):  # mask after every conv: a pointwise bias must not leak
                if layer.stride != (1, 1):
                    cur, off = conv_output_lengths(cur, 1), off // STRIDE
                frames = torch.arange(off, off + x.shape[2], device=x.device)
                keep = (frames[None, :] < cur[:, None])[:, None, :, None].to(x.dtype)
                x = x.mul_(keep) if inplace else x * keep
        b, c, t, f = x.shape
        return self.linear(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T, C * F') -> (B, T, d_model)
