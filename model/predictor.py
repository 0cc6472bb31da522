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
        if tokens.shape[1] == 1 and tokens.device.type == "cpu" and not self.training and not torch.is_grad_enabled():
            return self._step(tokens, state)
        x = self.dropout(self.embedding(tokens))  # (B, U, H)
        out, state = self.lstm(x, state)
        return self.dropout(out), state

    def _step(self, tokens: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """One decoding step (inference, CPU) as explicit LSTM-cell math on nn.LSTM's own weights.

        A single step is two weight-bound GEMVs per layer; on CPU nn.LSTM's fused kernel took ~4x as long
        for it at batch 1 (1.9 ms vs 9.1 ms for the v2/v3 2 x 640 stack on this machine).
        Gate order i, f, g, o as nn.LSTM; outputs equal it to float rounding (~1e-6).
        """
        lstm = self.lstm
        x = self.embedding(tokens[:, 0])  # (B, H)
        if state is None:
            zeros = x.new_zeros(lstm.num_layers, x.shape[0], lstm.hidden_size)
            state = (zeros, zeros)
        h_prev, c_prev = state
        hs, cs = [], []
        for i in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{i}"), getattr(lstm, f"weight_hh_l{i}")
            if lstm.bias:
                gates = torch.addmm(getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}"), x, w_ih.t())
            else:
                gates = x @ w_ih.t()
            gates.addmm_(h_prev[i], w_hh.t())
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
            c = torch.sigmoid(forget_gate) * c_prev[i] + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            x = torch.sigmoid(out_gate) * torch.tanh(c)
            hs.append(x)
            cs.append(c)
        return x[:, None], (torch.stack(hs), torch.stack(cs))
