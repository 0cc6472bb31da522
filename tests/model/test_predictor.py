"""The prediction network's single-step inference path (explicit LSTM-cell math on CPU) against nn.LSTM."""
import pytest
import torch

from model.config import PredictorConfig
from model.predictor import PredictionNetwork


@pytest.mark.parametrize("layers,batch", [(1, 1), (2, 1), (2, 5)])
def test_step_equals_nn_lstm(layers, batch):
    torch.manual_seed(layers * 10 + batch)
    net = PredictionNetwork(20, PredictorConfig(pred_hidden=32, pred_rnn_layers=layers, dropout=0.1)).eval()
    tokens = torch.randint(0, 21, (batch, 6))
    state_fast = state_ref = None
    for u in range(tokens.shape[1]):  # a few steps, starting from no state, feeding states back
        with torch.no_grad():
            out_fast, state_fast = net(tokens[:, u : u + 1], state_fast)  # the explicit-cell path
        with torch.enable_grad():
            out_ref, state_ref = net(tokens[:, u : u + 1], state_ref)  # nn.LSTM (grad mode skips the fast path)
        state_ref = tuple(s.detach() for s in state_ref)
        assert torch.allclose(out_fast, out_ref.detach(), atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state_fast, state_ref))
    # the whole sequence at once (training shape) runs nn.LSTM and agrees with the step-by-step outputs
    with torch.no_grad():
        full, _ = net(tokens)
    assert torch.allclose(full[:, -1:], out_fast, atol=1e-5)
