"""LSTM prediction network (NeMo RNNTDecoder): embeds the previous label, runs a stacked LSTM."""
from __future__ import annotations

import torch
from torch import nn

from .config import PredictorConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, B, H)


class PredictionNetwork(nn.Module):
    """`forward(tokens (B, U), state=None) -> (out (B, U, H), state)`.

    The blank id doubles as start-of-sequence: its embedding row is the padding row (zeros
    at init, kept at zero by NeMo's `blank_as_pad`), so the first step sees a zero input.
    """

    def __init__(self, vocab_size: int, cfg: PredictorConfig):
        super().__init__()
        self.blank_id = vocab_size
        self.embedding = nn.Embedding(vocab_size + 1, cfg.pred_hidden, padding_idx=vocab_size)
        self.lstm = nn.LSTM(cfg.pred_hidden, cfg.pred_hidden, num_layers=cfg.pred_rnn_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.pred_rnn_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.dropout(self.embedding(tokens))  # (B, U, H)
        out, state = self.lstm(x, state)
        return self.dropout(out), state
