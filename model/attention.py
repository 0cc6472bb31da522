"""Relative-position multi-head self-attention (Transformer-XL, Dai et al. 2019, sec. 3.3).

score(i, j) = (q_i + u) . k_j + (q_i + v) . W_R r_{i-j}, scaled by 1/sqrt(d_k), where r_p is the
sinusoidal embedding of the relative position p = i - j. Two ways to compute it:

- full attention: every query sees every valid key; the positional term is one (T, 2T-1) matmul
  plus the classic rel-shift, handed to `scaled_dot_product_attention` as an additive bias.
- limited context (NeMo's `rel_pos_local_attn`, att_context_size [L, R]): query i sees keys
  j with -L <= j - i <= R. Computed block by block over queries, so memory is O(T * (block + L + R))
  instead of O(T^2): an hour of audio (45,000 frames) fits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

QUERY_BLOCK = 256  # query frames per block in the limited-context path (20 s of audio)


def sinusoid_positions(positions: torch.Tensor, d_model: int, dtype: torch.dtype) -> torch.Tensor:
    """Interleaved sin/cos embeddings of relative `positions` (P,) -> (P, d_model), as NeMo/transformers."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32) / d_model))
    angles = positions.float()[:, None] * inv_freq[None, :]  # (P, d_model / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(len(positions), d_model).to(dtype)


class RelPositionAttention(nn.Module):
    """`forward(x (B, T, D), key_valid (B, T) bool) -> (B, T, D)`. Parameter names follow transformers."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, dropout: float, context: tuple[int, int] = (-1, -1)):
        super().__init__()
        self.n_heads, self.d_k = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.relative_k_proj = nn.Linear(d_model, d_model, bias=False)  # W_R
        self.bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))  # content bias u
        self.bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))  # position bias v
        self.dropout = dropout
        self.context = context  # (left, right) frames; -1 = unlimited

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def _rel_keys(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        r = sinusoid_positions(positions, self.n_heads * self.d_k, dtype)
        return self.relative_k_proj(r).view(len(positions), self.n_heads, self.d_k).transpose(0, 1)  # (H, P, d_k)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        q_u = q + self.bias_u[None, :, None, :]
        q_v = q + self.bias_v[None, :, None, :]
        if self.context[0] < 0 and self.context[1] < 0:
            out = self._full(q_u, q_v, k, v, key_valid)
        else:
            out = self._local(q_u, q_v, k, v, key_valid)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))

    def _full(self, q_u, q_v, k, v, key_valid):
        t = q_u.shape[2]
        positions = torch.arange(t - 1, -t, -1, device=q_u.device)  # (2T - 1,) from T-1 down to -(T-1)
        r = self._rel_keys(positions, q_u.dtype)  # (H, 2T-1, d_k)
        bd = torch.matmul(q_v, r.transpose(-1, -2).unsqueeze(0))  # (B, H, T, 2T - 1)
        bd = rel_shift(bd)[..., :t] / math.sqrt(self.d_k)  # (B, H, T, T): bd[i, j] uses position i - j
        bd = bd.masked_fill(~key_valid[:, None, None, :], torch.finfo(bd.dtype).min)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q_u, k, v, attn_mask=bd, dropout_p=p)  # (B, H, T, d_k)

    def _local(self, q_u, q_v, k, v, key_valid):
        t = q_u.shape[2]
        left = self.context[0] if self.context[0] >= 0 else t
        right = self.context[1] if self.context[1] >= 0 else t
        out = torch.empty_like(q_u)
        p = self.dropout if self.training else 0.0
        for s in range(0, t, QUERY_BLOCK):
            e = min(s + QUERY_BLOCK, t)
            ks, ke = max(0, s - left), min(t, e + right)  # keys any query of the block may see
            qi = torch.arange(s, e, device=q_u.device)
            kj = torch.arange(ks, ke, device=q_u.device)
            rel = qi[:, None] - kj[None, :]  # (C, K) relative position i - j
            hi, lo = e - 1 - ks, s - (ke - 1)  # largest and smallest i - j in the block
            positions = torch.arange(hi, lo - 1, -1, device=q_u.device)  # descending, like the full path
            r = self._rel_keys(positions, q_u.dtype)  # (H, P, d_k)
            bd_all = torch.matmul(q_v[:, :, s:e], r.transpose(-1, -2).unsqueeze(0))  # (B, H, C, P)
            index = (hi - rel).expand(q_u.shape[0], self.n_heads, -1, -1)  # (B, H, C, K) column of i - j
            bd = torch.gather(bd_all, -1, index) / math.sqrt(self.d_k)
            allowed = (rel <= left) & (-rel <= right)  # (C, K): -L <= j - i <= R
            mask = allowed[None, None] & key_valid[:, None, None, ks:ke]
            bd = bd.masked_fill(~mask, torch.finfo(bd.dtype).min)
            out[:, :, s:e] = F.scaled_dot_product_attention(q_u[:, :, s:e], k[:, :, ks:ke], v[:, :, ks:ke], attn_mask=bd, dropout_p=p)
        return out


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL shift (appendix B): column c of row i moves so that column j holds position i - j."""
    b, h, t, p = x.shape
    x = F.pad(x, (1, 0)).view(b, h, p + 1, t)  # (B, H, P + 1, T)
    return x[:, :, 1:].view(b, h, t, p)
