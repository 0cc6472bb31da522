"""The fixed-shape label-looping stages (model/label_looping.py, what the CUDA path captures as graphs)
against the compact CPU decoder and NeMo's outputs, on the NeMo-made fixture models; and the properties
graph capture needs, checked on the CPU: no stage reads a device value on the host or makes a
data-dependent shape, and every state tensor keeps its storage from call to call."""
import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import model
from model.confidence import ConfidenceConfig
from model.decoding import greedy_tdt
from model.label_looping import LabelLooping, _State
from model.transcribe import _pad, _to_array

DATA = Path(__file__).resolve().parents[1] / "data"
MODELS = ["tiny_tdt", "tiny_tdt_ms2", "tiny_tdt_ms3", "tiny_tdt_ctc"]
CONFIDENCES = [None, ConfidenceConfig(), ConfidenceConfig(exclude_blank=False, aggregation="mean"),
               ConfidenceConfig(name="max_prob", alpha=1.0, exclude_blank=False, aggregation="prod",
                                tdt_include_duration=True)]


@pytest.fixture(scope="module", params=MODELS)
def encoded(request):
    name = request.param
    ref = json.loads((DATA / "nemo" / f"{name}.json").read_text())
    m = model.load(DATA / "nemo" / f"{name}.nemo")
    batch, lengths = _pad([_to_array(str(DATA / "audio" / c), 16000) for c in ref["clips"]])
    with torch.inference_mode():
        enc, elen = m.encode(batch, lengths)
    return name, m, ref, enc, elen


def same(a, b) -> bool:
    """Equal hypotheses; scores to float rounding (the compact decoder evaluates the joint on windows of
    frames, a matmul of another shape)."""
    return len(a) == len(b) and all(
        (x.token_ids, x.frames, x.durations) == (y.token_ids, y.frames, y.durations)
        and len(x.token_confidence) == len(y.token_confidence)
        and all(abs(p - q) < 1e-5 for p, q in zip(x.token_confidence, y.token_confidence)) for x, y in zip(a, b))


def _compact(m, enc, elen, rule, confidence):
    c = m.config
    return greedy_tdt(enc, elen, m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, compact=True,
                      rule=rule, confidence=confidence)


def _decoder(m, rule, confidence, cls=LabelLooping):
    c = m.config
    return cls(m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, rule, confidence)


@pytest.mark.parametrize("rule", ["greedy_batch", "greedy"])
def test_stages_equal_the_compact_decoder_and_nemo(encoded, rule):
    name, m, ref, enc, elen = encoded
    key = "bs1" if rule == "greedy_batch" else "greedy_bs1"
    for confidence in CONFIDENCES:
        fixed = _decoder(m, rule, confidence)(enc, elen)
        assert same(fixed, _compact(m, enc, elen, rule, confidence)), (name, rule, confidence)
        if key in ref:
            assert [list(h.token_ids) for h in fixed] == [list(r["y_sequence"]) for r in ref[key]]


def test_one_state_serves_smaller_batches_and_grows_for_larger(encoded):
    """Spare rows (length 0) and spare frames change nothing; a bigger call grows the state."""
    name, m, _, enc, elen = encoded
    d = _decoder(m, "greedy_batch", ConfidenceConfig(exclude_blank=False))
    calls = [(enc, elen), (enc[1:3, : int(elen[1:3].max())], elen[1:3]), (enc[:1], elen[:1]),
             (torch.cat([enc, enc]), torch.cat([elen, elen])), (enc[2:], elen[2:])]
    capacities = []
    for e, n in calls:
        assert same(d(e, n), _compact(m, e, n, "greedy_batch", d.confidence)), name
        capacities.append(d.state.capacity)
    first = capacities[0]
    assert capacities[1] == capacities[2] == first  # smaller calls ran inside the first state
    assert capacities[3][0] == 2 * first[0] and capacities[4] == capacities[3]


def test_zero_length_rows_and_an_all_empty_batch(encoded):
    name, m, _, enc, elen = encoded
    lengths = elen.clone()
    lengths[1] = 0
    d = _decoder(m, "greedy_batch", None)
    out = d(enc, lengths)
    assert out[1].token_ids == () and out == _compact(m, enc, lengths, "greedy_batch", None)
    assert all(h.token_ids == () for h in d(enc, torch.zeros_like(elen)))


HOST_READS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave",
              "equal", "is_nonzero"}


class NoHostReads(TorchDispatchMode):
    """Fails on any op that reads a device value on the host or sizes its output by data (what a CUDA
    graph cannot capture)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        masks = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] if len(args) > 1 else ()))
        if name in HOST_READS or masks:
            raise AssertionError(f"a stage called {func.__name__}, which needs the host")
        return func(*args, **(kwargs or {}))


class Checked(LabelLooping):
    """Runs every stage under NoHostReads and checks that no state tensor moved to new storage."""

    stages_run = 0

    def _stage(self, name):
        before = _storages(self.state)
        with NoHostReads():
            super()._stage(name)
        assert _storages(self.state) == before, f"stage {name} replaced a state tensor"
        Checked.stages_run += 1


def _storages(s: _State) -> dict:
    out = {}
    for field, value in vars(s).items():
        if isinstance(value, torch.Tensor):
            out[field] = (value.data_ptr(), tuple(value.shape))
        elif value is not None:  # BlankScores
            out.update({f"{field}.{k}": (v.data_ptr(), tuple(v.shape)) for k, v in vars(value).items()
                        if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("rule", ["greedy_batch", "greedy"])
def test_stages_are_capturable_no_host_reads_no_new_storage(encoded, rule):
    name, m, _, enc, elen = encoded
    Checked.stages_run = 0
    for confidence in (None, ConfidenceConfig(exclude_blank=False, aggregation="min")):
        d = _decoder(m, rule, confidence, cls=Checked)
        assert same(d(enc, elen), _compact(m, enc, elen, rule, confidence))
    assert Checked.stages_run > 20


def test_the_check_catches_a_host_read():
    """The dispatch check is not vacuous: a stage that syncs (bool of a tensor) or masks by data fails it."""
    x = torch.tensor([1, 0, 2])
    with pytest.raises(AssertionError, match="needs the host"):
        with NoHostReads():
            bool(x.any())
    with pytest.raises(AssertionError, match="needs the host"):
        with NoHostReads():
            x[x > 0]


def test_cuda_graphs_need_a_cuda_tensor(encoded):
    name, m, _, enc, elen = encoded
    c = m.config
    d = LabelLooping(m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA"):
        d(enc, elen)
