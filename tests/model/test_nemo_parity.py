"""Parity with NeMo 3.0 on tiny real .nemo models (fixtures made by tests/data/make_nemo_fixtures.py).

NeMo is not installed in CI: its outputs are committed JSON/npz. The reference for decoding is
NeMo's batch_size=1 output: NeMo 3.0's batched CPU label looping records wrong token durations for
some rows (see test_nemo_batched_cpu_trap_is_real), and our batched output must not.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import model

DATA = Path(__file__).resolve().parents[1] / "data"
MODELS = ["tiny_tdt", "tiny_tdt_ff2", "tiny_tdt_local"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    name = request.param
    ref = json.loads((DATA / "nemo" / f"{name}.json").read_text())
    tensors = np.load(DATA / "nemo" / f"{name}_tensors.npz")
    return name, model.load(DATA / "nemo" / f"{name}.nemo"), ref, tensors


def test_config_read_from_nemo(case):
    name, m, _, _ = case
    assert m.config.encoder.ff_expansion_factor == (2 if name == "tiny_tdt_ff2" else 4)
    assert m.config.encoder.att_context_size == ((8, 8) if name == "tiny_tdt_local" else (-1, -1))
    assert m.config.durations == (0, 1, 2, 3, 4) and m.config.features.n_mels == 128


def test_features_and_encoder_match_nemo(case):
    _, m, _, t = case
    for i in range(2):
        audio = torch.from_numpy(t[f"audio_{i}"])[None]
        with torch.no_grad():
            feats, flen = m.preprocessor(audio, torch.tensor([audio.shape[1]]))
            assert int(flen[0]) == int(t[f"feature_len_{i}"][0])
            n = int(flen[0])
            assert np.abs(feats[0, :, :n].numpy() - t[f"features_{i}"][:, :n]).max() < 1e-4
            enc, elen = m.encoder(torch.from_numpy(t[f"features_{i}"])[None], flen)
        n = int(elen[0])
        assert n == int(t[f"encoded_len_{i}"][0])
        # frames past the length are padding: each implementation leaves its own values there
        assert np.abs(enc[0, :n].numpy() - t[f"encoded_{i}"][:n]).max() <= 1e-4


def _check_against(ours, refs):
    for o, r in zip(ours, refs):
        assert o.text == r["text"]
        assert [t.id for t in o.tokens] == r["y_sequence"]
        assert list(o.frames) == r["timestep"]
        assert list(o.durations) == r["token_duration"]
        assert [(t.text, t.start, t.end) for t in o.tokens] == [(c["char"], c["start"], c["end"]) for c in r["char"]]
        assert [(w.text, w.start, w.end) for w in o.words] == [(w["word"], w["start"], w["end"]) for w in r["word"]]
        assert [(s.text, s.start, s.end) for s in o.segments] == [(s["segment"], s["start"], s["end"]) for s in r["segment"]]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_transcripts_and_timestamps_equal_nemo_bs1(case, batch_size):
    _, m, ref, _ = case
    paths = [DATA / "audio" / c for c in ref["clips"]]
    ours = m.transcribe(paths, batch_size=batch_size, timestamps=True)
    _check_against(ours, ref["bs1"])


def test_nemo_batched_cpu_trap_is_real(case):
    """Documents the reference trap: NeMo's bs4 durations differ from its own bs1 on some clips,
    while its token ids agree. (If a NeMo fix makes them equal, regenerate and drop this test.)"""
    _, _, ref, _ = case
    assert [r["y_sequence"] for r in ref["bs4"]] == [r["y_sequence"] for r in ref["bs1"]]
    assert any(a["token_duration"] != b["token_duration"] for a, b in zip(ref["bs4"], ref["bs1"]))
