"""Parity with transformers 5.23 ParakeetForTDT on random tiny weights (test-only reference)."""
import numpy as np
import pytest
import torch

import model
from tests.model.helpers import tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    m = tiny_model(folder / "tok")
    model.save(m, folder / "ckpt")
    return m, folder / "ckpt"


def _batch(seed=0, lengths=(16000, 11000, 4000)):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn(n, generator=g)
    return x, torch.tensor(lengths)


def test_features_match_transformers(saved):
    m, folder = saved
    fe = transformers.ParakeetFeatureExtractor.from_pretrained(folder)
    x, lengths = _batch()
    ref = fe([x[i, :n].numpy() for i, n in enumerate(lengths)], sampling_rate=16000, return_tensors="pt")
    ours, frames = m.preprocessor(x, lengths)
    assert torch.equal(frames, ref["attention_mask"].sum(-1))
    diff = (ours.transpose(1, 2) - ref["input_features"]).abs().max().item()
    assert diff < 1e-4, diff


def test_encoder_matches_transformers(saved):
    m, folder = saved
    hf = transformers.ParakeetForTDT.from_pretrained(folder).eval()
    x, lengths = _batch(1)
    feats, frames = m.preprocessor(x, lengths)
    with torch.no_grad():
        ours, ours_len = m.encoder(feats, frames)
        mask = torch.arange(feats.shape[-1])[None, :] < frames[:, None]
        ref = hf.get_audio_features(input_features=feats.transpose(1, 2), attention_mask=mask)
    ref_len = ref.attention_mask.sum(-1)
    assert torch.equal(ours_len, ref_len)
    for i, n in enumerate(ours_len.tolist()):
        diff = (ours[i, :n] - ref.last_hidden_state[i, :n]).abs().max().item()
        assert diff <= 1e-4, (i, diff)
        proj = m.joint.project_encoder(ours[i, :n])
        assert (proj - ref.pooler_output[i, :n]).abs().max().item() <= 1e-4


def test_hf_folder_roundtrip(saved, tmp_path):
    """A folder saved by transformers loads in ours with identical weights and outputs."""
    m, folder = saved
    hf = transformers.ParakeetForTDT.from_pretrained(folder)
    hf.save_pretrained(tmp_path)
    m.tokenizer.save(tmp_path)
    m2 = model.load(tmp_path)
    assert m2.config == m.config
    x, lengths = _batch(2)
    with torch.no_grad():
        a, _ = m.encode(x, lengths)
        b, _ = m2.encode(x, lengths)
    assert torch.equal(a, b)
