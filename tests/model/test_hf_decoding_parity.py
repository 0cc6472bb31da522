"""Greedy decoding parity with transformers 5.23 `ParakeetForTDT.generate()` on random tiny weights.

generate() agrees with us (and NeMo) where it is correct. Its measured gaps, each shown below:
- no max-symbols-per-frame guard for TDT: zero-duration emissions never force a frame advance;
- rows whose encoder frames are exhausted keep emitting until the whole batch is done;
- it takes the duration *index* as the number of frames (right only for durations [0, 1, 2, ...]);
  its step-to-frame bookkeeping is then wrong for models with other durations lists;
- its greedy step argmaxes over token and duration logits together (crashes when a duration wins).
"""
import dataclasses
from collections import Counter

import pytest
import torch

import model
from tests.model.helpers import tiny_model

transformers = pytest.importorskip("transformers")


def _model(folder, duration_bias, durations=None):
    m = tiny_model(folder / "tok", seed=5)
    if durations is not None:  # same weights, another durations list (the head width is unchanged)
        other = model.ParakeetTDT(dataclasses.replace(m.config, durations=durations), m.tokenizer).eval()
        other.load_state_dict(m.state_dict())
        m = other
    with torch.no_grad():
        m.joint.head.bias[m.config.blank_id + 1 :] += torch.tensor(duration_bias)
    model.save(m, folder / "ckpt")
    hf = transformers.ParakeetForTDT.from_pretrained(folder / "ckpt").eval()
    return m, hf


def _audio(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn(n, generator=g)
    return x, torch.tensor(lengths)


def _hf_decode(m, hf, x, lengths, max_new_tokens=None):
    """Run generate() and read it back as (token ids, frames, durations) per row, cut at each row's length."""
    feats, frames = m.preprocessor(x, lengths)
    mask = torch.arange(feats.shape[-1])[None] < frames[:, None]
    with torch.no_grad():
        out = hf.generate(input_features=feats.transpose(1, 2), attention_mask=mask, max_new_tokens=max_new_tokens)
        _, enc_len = m.encoder(feats, frames)
    blank = m.config.blank_id
    rows, raw = [], []
    for b in range(len(lengths)):
        toks, frs, durs, frame = [], [], [], 0
        all_tokens = []
        for tok, dur in zip(out.sequences[b, 1:].tolist(), out.durations[b, 1:].tolist()):
            all_tokens.append((tok, frame))
            if frame < int(enc_len[b]) and tok != blank:
                toks.append(tok)
                frs.append(frame)
                durs.append(dur)
            frame += dur
        rows.append((tuple(toks), tuple(frs), tuple(durs)))
        raw.append(all_tokens)
    return rows, raw, enc_len


def test_token_ids_and_durations_equal_generate(tmp_path):
    # bias the duration head towards 1-2 frames: generate()'s gaps are not triggered here
    m, hf = _model(tmp_path, [-6.0, -3.0, -3.5, -4.0, -4.5])
    x, lengths = _audio([16000, 9000, 4000, 12000])
    ours = m.transcribe_waveforms(x, lengths)
    ref, _, _ = _hf_decode(m, hf, x, lengths)
    assert sum(len(r[0]) for r in ref) > 10  # the comparison is not vacuous
    for o, (toks, frs, durs) in zip(ours, ref):
        assert tuple(t.id for t in o.tokens) == toks
        assert o.frames == frs and o.durations == durs


def test_gap_finished_rows_keep_emitting(tmp_path):
    m, hf = _model(tmp_path, [-6.0, -3.0, -3.5, -4.0, -4.5])
    x, lengths = _audio([16000, 3000])
    _, raw, enc_len = _hf_decode(m, hf, x, lengths)
    blank = m.config.blank_id
    late = [tok for tok, frame in raw[1] if frame >= int(enc_len[1]) and tok not in (blank,)]
    assert late, "generate() stopped the short row at its length: this gap is fixed, update the docs"
    ours = m.transcribe_waveforms(x, lengths)
    assert all(f < int(enc_len[1]) for f in ours[1].frames)


def test_gap_no_max_symbols_guard(tmp_path):
    # zero durations dominate: NeMo and we advance after 10 symbols at a frame, generate() does not
    m, hf = _model(tmp_path, [-3.0, -9.0, -9.0, -9.0, -9.0])
    x, lengths = _audio([8000])
    ours = m.transcribe_waveforms(x, lengths)[0]
    _, raw, _ = _hf_decode(m, hf, x, lengths, max_new_tokens=40)
    per_frame_ours = Counter(ours.frames)
    per_frame_hf = Counter(frame for tok, frame in raw[0] if tok != m.config.blank_id)
    assert max(per_frame_ours.values()) <= m.config.max_symbols_per_step
    assert max(per_frame_hf.values()) > m.config.max_symbols_per_step


def test_gap_generate_argmax_spans_duration_logits(tmp_path):
    """generate()'s greedy step takes argmax over token AND duration logits: when a duration logit is
    the largest, it feeds a non-token id to the prediction network and fails. We split the heads."""
    m, hf = _model(tmp_path, [8.0, 8.0, 8.0, 8.0, 8.0])
    x, lengths = _audio([8000])
    assert isinstance(m.transcribe_waveforms(x, lengths)[0], model.Transcript)
    with pytest.raises(IndexError):
        _hf_decode(m, hf, x, lengths, max_new_tokens=20)


def test_gap_duration_index_taken_as_frames(tmp_path):
    """With durations (0, 2, 4, 6, 8) saved in config.json, generate() still advances by the argmax
    *index* (measured: ours emits at frames 0, 2, 4, ... with duration 2; generate() at 0, 1, 2, ... with
    "duration" 1, the index of 2)."""
    durations = (0, 2, 4, 6, 8)
    m, hf = _model(tmp_path, [-6.0, -3.0, -3.5, -4.0, -4.5], durations=durations)
    assert tuple(hf.config.durations) == durations  # the checkpoint does carry the list
    x, lengths = _audio([16000])
    ours = m.transcribe_waveforms(x, lengths)[0]
    assert len(ours.durations) > 3 and set(ours.durations) <= set(durations)
    # generate() on the same model: the durations it reports are indices into the list, and its frame
    # pointer advanced by them. The first emission (same state, same frame) shows it directly.
    (hf_row,), _, _ = _hf_decode(m, hf, x, lengths)
    hf_ids, hf_frames, hf_durs = hf_row
    assert (hf_ids[0], hf_frames[0]) == (ours.token_ids[0], ours.frames[0]) == (ours.token_ids[0], 0)
    assert ours.durations[0] != 1 and hf_durs[0] == durations.index(ours.durations[0])
    assert hf_frames[1] - hf_frames[0] == hf_durs[0] != ours.frames[1] - ours.frames[0]
