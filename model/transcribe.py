"""Audio in, Transcript records out: batching, encoding, greedy TDT decoding, timestamps."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .audio import decode_audio
from .decoding import greedy_tdt
from .records import Transcript
from .timestamps import build_transcript, supported_punctuation

if TYPE_CHECKING:
    from .parakeet import ParakeetTDT


@torch.inference_mode()
def transcribe_waveforms(m: "ParakeetTDT", waveforms: torch.Tensor, lengths: torch.Tensor, timestamps: bool = True) -> list[Transcript]:
    """A padded batch: waveforms (B, N) float32 at the model rate, lengths (B,) samples."""
    if m.tokenizer is None:
        raise ValueError("this model has no tokenizer: it cannot produce text")
    cfg = m.config
    enc, enc_lengths = m.encode(waveforms, lengths)
    hyps = greedy_tdt(enc, enc_lengths, m.predictor, m.joint, cfg.blank_id, cfg.durations, cfg.max_symbols_per_step)
    punct = _punctuation(m)
    stride = cfg.features.hop_length / cfg.features.sample_rate  # 0.01 s, NeMo's window_stride
    return [
        build_transcript(h, m.tokenizer, stride, cfg.encoder.subsampling_factor, int(n) / cfg.features.sample_rate, punct, timestamps)
        for h, n in zip(hyps, lengths.tolist())
    ]


def _punctuation(m: "ParakeetTDT") -> frozenset[str]:
    cached = getattr(m, "_punctuation_cache", None)
    if cached is None or cached[0] is not m.tokenizer:
        cached = (m.tokenizer, supported_punctuation(m.tokenizer.pieces))
        m._punctuation_cache = cached
    return cached[1]


def _to_array(item, sample_rate: int) -> np.ndarray:
    if isinstance(item, (str, os.PathLike, bytes)):
        return decode_audio(item, sample_rate)[0]
    arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if arr.ndim != 1:
        raise ValueError(f"audio arrays must be 1-D mono at {sample_rate} Hz, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def transcribe(m: "ParakeetTDT", inputs: Sequence, batch_size: int = 16, timestamps: bool = True) -> list[Transcript]:
    """Files (any soundfile format/rate) or 1-D 16 kHz arrays -> Transcripts, in input order.

    Inputs are sorted by length so each batch pads little; results are returned in input order.
    """
    if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)):
        raise TypeError("transcribe takes a list of inputs; wrap a single input in a list")
    sr = m.config.features.sample_rate
    arrays = [_to_array(x, sr) for x in inputs]
    order = sorted(range(len(arrays)), key=lambda i: len(arrays[i]))
    results: list[Transcript | None] = [None] * len(arrays)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        lengths = torch.tensor([len(arrays[i]) for i in idx])
        batch = torch.zeros(len(idx), int(lengths.max()) if len(idx) else 0)
        for row, i in enumerate(idx):
            batch[row, : len(arrays[i])] = torch.from_numpy(arrays[i])
        for i, t in zip(idx, transcribe_waveforms(m, batch, lengths, timestamps)):
            results[i] = t
    return results  # type: ignore[return-value]
