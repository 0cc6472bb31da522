"""TDT joint network: logits = head(act(enc_proj(f_t) + pred_proj(g_u))), act relu (Parakeet), sigmoid or tanh.

The head predicts V + 1 token logits (blank last) followed by one logit per TDT duration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class Joint(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_classes_with_blank = cfg.vocab_size + 1
        self.num_durations = len(cfg.durations)
        self.enc_proj = nn.Linear(cfg.encoder.d_model, cfg.joint.joint_hidden)
        self.pred_proj = nn.Linear(cfg.predictor.pred_hidden, cfg.joint.joint_hidden)
        self.head = nn.Linear(cfg.joint.joint_hidden, self.num_classes_with_blank + self.num_durations)
        self.dropout = cfg.joint.dropout
        self.activation = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[cfg.joint.activation]

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        """(..., D_enc) -> (..., J)"""
        return self.enc_proj(enc)

    def project_predictor(self, pred: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., J)"""
        return self.pred_proj(pred)

    def combine(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor) -> torch.Tensor:
        """Projected inputs (broadcastable) -> (..., V + 1 + n_durations) logits."""
        hidden = F.dropout(self.activation(enc_proj + pred_proj), self.dropout, self.training)
        return self.head(hidden)

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Full lattice for training: enc (B, T, D), pred (B, U+1, H) -> (B, T, U+1, V+1+n_durations)."""
        return self.combine(self.project_encoder(enc)[:, :, None, :], self.project_predictor(pred)[:, None, :, :])

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., V+1+n_dur) -> token logits (..., V+1), duration logits (..., n_dur)."""
        return logits[..., : self.num_classes_with_blank], logits[..., self.num_classes_with_blank :]
