"""FastConformer encoder: dw_striding subsampling, then Conformer blocks (macaron FF, rel-pos
MHSA, convolution module). Parameter names follow transformers' ParakeetEncoder so its
checkpoints load as they are; NeMo names are mapped in checkpoint.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RelPositionAttention
from .config import EncoderConfig
from .subsampling import Subsampling


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        if torch.is_grad_enabled() or self.training:
            return self.linear2(F.dropout(F.silu(h), self.dropout, self.training))
        return self.linear2(F.silu(h, inplace=True))  # inference: no second (B, T, d_ff) tensor


class ConvModule(nn.Module):
    """pointwise (2C) -> GLU -> depthwise (kernel 9) -> BatchNorm (or LayerNorm over channels) -> SiLU -> pointwise."""

    def __init__(self, d_model: int, kernel_size: int, bias: bool, norm: str = "batch_norm"):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2, groups=d_model, bias=bias)
        self.norm = nn.BatchNorm1d(d_model) if norm == "batch_norm" else nn.LayerNorm(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # (B, C, T)
        if isinstance(self.norm, nn.LayerNorm):  # NeMo conv_norm_type layer_norm: over channels, per frame
            x = self.depthwise_conv(x.masked_fill(~valid[:, None, :], 0.0))
            x = F.silu(self.norm(x.transpose(1, 2)).transpose(1, 2))
            return self.pointwise_conv2(x).transpose(1, 2)  # (B, T, C)
        if torch.is_grad_enabled() or self.training:
            x = x.masked_fill(~valid[:, None, :], 0.0)  # padding must not leak into valid frames
            x = F.silu(self.norm(self.depthwise_conv(x)))
        else:  # inference: in place, BatchNorm folded into the depthwise conv (one pass fewer)
            x = x.masked_fill_(~valid[:, None, :], 0.0)
            x = F.silu(self._depthwise_with_norm(x), inplace=True)
        return self.pointwise_conv2(x).transpose(1, 2)  # (B, T, C)

    def _depthwise_with_norm(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm(depthwise(x)) in eval mode as one conv: w * s, (b - mean) * s + beta, s = gamma / std."""
        conv, bn = self.depthwise_conv, self.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        return F.conv1d(x, conv.weight * scale[:, None, None], (bias - bn.running_mean) * scale + bn.bias,
                        padding=conv.padding, groups=conv.groups)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, d_ff = cfg.d_model, cfg.d_model * cfg.ff_expansion_factor
        self.norm_feed_forward1 = nn.LayerNorm(d)
        self.feed_forward1 = FeedForward(d, d_ff, cfg.attention_bias, cfg.dropout)
        self.norm_self_att = nn.LayerNorm(d)
        self.self_attn = RelPositionAttention(d, cfg.n_heads, cfg.attention_bias, cfg.dropout_att, cfg.att_context_size)
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conv_kernel_size, cfg.convolution_bias, cfg.conv_norm)
        self.norm_feed_forward2 = nn.LayerNorm(d)
        self.feed_forward2 = FeedForward(d, d_ff, cfg.attention_bias, cfg.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """inplace=True (inference only) updates x in place: the encoder passes it for its own tensors."""
        if inplace and not torch.is_grad_enabled() and not self.training:
            x.add_(self.feed_forward1(self.norm_feed_forward1(x)), alpha=0.5)
            x.add_(self.self_attn(self.norm_self_att(x), valid))
            x.add_(self.conv(self.norm_conv(x), valid))
            x.add_(self.feed_forward2(self.norm_feed_forward2(x)), alpha=0.5)
            return self.norm_out(x)
        drop = lambda y: F.dropout(y, self.dropout, self.training)  # noqa: E731
        x = x + 0.5 * drop(self.feed_forward1(self.norm_feed_forward1(x)))  # macaron half-step FF
        x = x + drop(self.self_attn(self.norm_self_att(x), valid))
        x = x + drop(self.conv(self.norm_conv(x), valid))
        x = x + 0.5 * drop(self.feed_forward2(self.norm_feed_forward2(x)))
        return self.norm_out(x)


class FastConformerEncoder(nn.Module):
    """`forward(features (B, n_mels, F), lengths (B,)) -> (encoded (B, T, d_model), lengths (B,))`, T = ceil-ish F / 8."""

    def __init__(self, n_mels: int, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.subsampling = Subsampling(n_mels, cfg)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.n_layers))
        self.input_scale = math.sqrt(cfg.d_model) if cfg.xscaling else 1.0

    def set_attention_context(self, context: tuple[int, int]) -> None:
        """Switch every layer to limited-context attention ((L, R) frames) or back to full ((-1, -1)).

        NeMo's `change_attention_model('rel_pos_local_attn', [L, R])` for long audio; same weights.
        """
        for layer in self.layers:
            layer.self_attn.context = (int(context[0]), int(context[1]))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(features, lengths)
        x = F.dropout(x * self.input_scale, self.config.dropout_pre_encoder, self.training)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        inplace = not torch.is_grad_enabled() and not self.training
        for layer in self.layers:
            x = layer(x, valid, inplace)  # x is ours: the subsampling's output, then each layer's norm_out
        return x, lengths
