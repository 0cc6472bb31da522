"""transcribe(): mixed inputs, length-sorted batching restored to input order, bad input named."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import model
from model.decoding import greedy_tdt
from model.transcribe import transcribe, transcribe_waveforms
from tests.model.helpers import tiny_model

SR = 16_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_model(tmp_path_factory.mktemp("tok"), seed=7)
    with torch.no_grad():  # durations of 1-2 frames and a moderate blank rate: a few tokens per clip
        m.joint.head.bias[m.config.blank_id + 1 :] += torch.tensor([-6.0, 2.0, 1.0, -1.0, -2.0])
    return m


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def test_order_restored_and_batching_does_not_change_results(tiny, tmp_path):
    clips = _clips([12000, 3000, 16000, 800, 7000])
    path = tmp_path / "clip.flac"
    sf.write(path, clips[2], SR)  # lossless: decodes to the same samples up to FLAC's 16-bit grid
    inputs = [clips[0], torch.from_numpy(clips[1]), str(path), clips[3], clips[4]]
    one_by_one = [transcribe(tiny, [x], batch_size=1, confidence=None)[0] for x in inputs]
    scored = [transcribe(tiny, [x], batch_size=1)[0] for x in inputs]
    for bs in (2, 16):
        assert transcribe(tiny, inputs, batch_size=bs, confidence=None) == one_by_one
        batched = transcribe(tiny, inputs, batch_size=bs)
        # confidences come from the same logits up to the batch's float rounding
        assert [t.token_confidence for t in batched] == [pytest.approx(t.token_confidence, abs=1e-5) for t in scored]
    assert sum(len(t.tokens) for t in one_by_one) > 5  # not vacuous
    assert [t.duration for t in one_by_one] == [n / SR for n in (12000, 3000, 16000, 800, 7000)]


def test_waveforms_match_decoding_by_hand(tiny):
    clips = _clips([9000, 4000])
    x = torch.zeros(2, 9000)
    x[0], x[1, :4000] = torch.from_numpy(clips[0]), torch.from_numpy(clips[1])
    lengths = torch.tensor([9000, 4000])
    out = transcribe_waveforms(tiny, x, lengths)
    with torch.inference_mode():
        enc, elen = tiny.encode(x, lengths)
        hyps = greedy_tdt(enc, elen, tiny.predictor, tiny.joint, tiny.config.blank_id, tiny.config.durations)
    for t, h in zip(out, hyps):
        assert tuple(tok.id for tok in t.tokens) == h.token_ids
        assert t.frames == h.frames and t.durations == h.durations
        for tok, f, d in zip(t.tokens, h.frames, h.durations):  # 0.01 s stride x 8 (punctuation may snap earlier)
            assert tok.end <= (f + d) * 0.01 * 8 + 1e-9 and tok.start <= tok.end
    assert tiny.transcribe_waveforms(x, lengths) == out  # the model method delegates here


def test_timestamps_off_keeps_text_only(tiny):
    clip = _clips([10000])
    with_ts = transcribe(tiny, clip)[0]
    without = transcribe(tiny, clip, timestamps=False)[0]
    assert without.text == with_ts.text and without.tokens == () and without.words == ()
    assert without.frames == with_ts.frames


def test_empty_and_tiny_clips_in_a_batch(tiny, tmp_path):
    clips = _clips([0, 1, 300, 9000])
    wav = tmp_path / "c.wav"
    sf.write(wav, clips[3], 44_100)  # another rate: resampled to 16 kHz
    out = transcribe(tiny, clips + [wav.read_bytes(), wav], batch_size=3)
    assert out[0].text == "" and out[0].tokens == () and out[0].duration == 0.0
    assert out[1].tokens == () and out[1].duration == 1 / SR
    assert out[4] == out[5]  # bytes and path decode alike
    assert abs(out[5].duration - 9000 / 44_100) < 1e-4


def test_empty_list_and_bad_inputs(tiny, tmp_path):
    assert transcribe(tiny, []) == []
    with pytest.raises(TypeError, match="list"):
        transcribe(tiny, _clips([100])[0])
    with pytest.raises(ValueError, match=r"1-D"):
        transcribe(tiny, [np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="batch_size"):
        transcribe(tiny, [_clips([100])[0]], batch_size=0)
    missing = tmp_path / "nope.wav"
    with pytest.raises(model.AudioDecodeError, match="nope.wav"):
        transcribe(tiny, [_clips([100])[0], missing])
    corrupt = tmp_path / "bad.flac"
    corrupt.write_bytes(b"fLaC not really")
    with pytest.raises(model.AudioDecodeError, match="bad.flac"):
        transcribe(tiny, [corrupt])
