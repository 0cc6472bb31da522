"""Audio in, Transcript records out: batching, encoding, greedy TDT decoding, timestamps."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .audio import decode_audio, probe_duration
from .confidence import DEFAULT_CONFIDENCE, ConfidenceConfig
from .config import DECODING_STRATEGIES
from .decoding import greedy_tdt
from .label_looping import decoder_for
from .longform import DEFAULT_CHUNK_SECONDS, chunk_limit, frame_samples, split_points, stitch
from .records import Transcript
from .timestamps import build_transcript, supported_punctuation

if TYPE_CHECKING:
    from .parakeet import ParakeetTDT


def decoding_rule(m: "ParakeetTDT", decoding: str | None) -> str:
    """The decoding strategy to use: `decoding` if given, else the checkpoint's (config.decoding)."""
    rule = m.config.decoding if decoding is None else decoding
    if rule not in DECODING_STRATEGIES:
        raise ValueError(f"decoding={decoding!r}: expected one of {DECODING_STRATEGIES} (or None for the checkpoint's)")
    return rule


@torch.inference_mode()
def transcribe_waveforms(m: "ParakeetTDT", waveforms: torch.Tensor, lengths: torch.Tensor, timestamps: bool = True,
                         decoding: str | None = None,
                         confidence: ConfidenceConfig | None = DEFAULT_CONFIDENCE) -> list[Transcript]:
    """A padded batch: waveforms (B, N) float32 at the model rate, lengths (B,) samples. Not chunked.
    `confidence=None` skips the confidence scores."""
    if m.tokenizer is None:
        raise ValueError("this model has no tokenizer: it cannot produce text")
    cfg = m.config
    rule = decoding_rule(m, decoding)
    enc, enc_lengths = m.encode(waveforms, lengths)
    if enc.device.type == "cuda":  # the fixed-shape stages, captured as CUDA graphs once and replayed
        hyps = decoder_for(m, rule, confidence)(enc, enc_lengths)
    else:
        hyps = greedy_tdt(enc, enc_lengths, m.predictor, m.joint, cfg.blank_id, cfg.durations, cfg.max_symbols_per_step,
                          rule=rule, confidence=confidence)
    punct = _punctuation(m)
    stride = cfg.features.hop_length / cfg.features.sample_rate  # 0.01 s, NeMo's window_stride
    return [
        build_transcript(h, m.tokenizer, stride, cfg.encoder.subsampling_factor, int(n) / cfg.features.sample_rate, punct,
                         timestamps, confidence)
        for h, n in zip(hyps, lengths.tolist())
    ]


def _punctuation(m: "ParakeetTDT") -> frozenset[str]:
    cached = getattr(m, "_punctuation_cache", None)
    if cached is None or cached[0] is not m.tokenizer:
        cached = (m.tokenizer, supported_punctuation(m.tokenizer.pieces))
        m._punctuation_cache = cached
    return cached[1]


def _to_array(item, sample_rate: int) -> np.ndarray:
    """A file (path or bytes) or a 1-D array/tensor at `sample_rate` -> (N,) float32."""
    if isinstance(item, (str, os.PathLike, bytes)):
        return decode_audio(item, sample_rate)[0]
    arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if arr.ndim != 1:
        raise ValueError(f"audio arrays must be 1-D mono at {sample_rate} Hz, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _num_samples(item, sample_rate: int) -> int:
    """Length at `sample_rate` of a decoded array, or of a file from its header (not decoded yet)."""
    if not isinstance(item, (str, os.PathLike)):
        return len(item)
    seconds = probe_duration(os.fspath(item))  # the header's (sorting needs no exact length)
    if seconds:
        return int(seconds * sample_rate)
    return len(_to_array(item, sample_rate))


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D arrays -> zero-padded (B, N) float32 batch and (B,) lengths in samples."""
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    batch = torch.zeros(len(arrays), int(lengths.max()) if arrays else 0)  # (B, N)
    for row, a in enumerate(arrays):
        batch[row, : len(a)] = torch.from_numpy(a)
    return batch, lengths


def transcribe(m: "ParakeetTDT", inputs: Sequence, batch_size: int = 16, timestamps: bool = True,
               decoding: str | None = None, chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
               confidence: ConfidenceConfig | None = DEFAULT_CONFIDENCE) -> list[Transcript]:
    """Files (path or bytes, any soundfile format/rate) or 1-D 16 kHz arrays -> Transcripts, in input order.

    Inputs are sorted by length so each batch pads little; results are returned in input order.
    Files are checked up front (a missing or unreadable file raises AudioDecodeError naming it
    before any work) and decoded one batch at a time, so memory holds one batch of audio.
    Inputs longer than `chunk_seconds` (None: never) are split at pauses into chunks of at most that
    length, transcribed one chunk per call and stitched onto one timeline (model/longform.py): memory
    is the input's waveform plus one chunk's activations, whatever its length.
    `decoding`: "greedy_batch" or "greedy" overrides the checkpoint's strategy (config.decoding).
    `confidence`: how tokens, words and utterances are scored (NeMo's defaults); None skips it.
    """
    if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray, torch.Tensor)):
        raise TypeError("transcribe takes a list of inputs; wrap a single input in a list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rule = decoding_rule(m, decoding)
    sr, frame = m.config.features.sample_rate, frame_samples(m.config)
    limit = chunk_limit(chunk_seconds, sr, frame) if chunk_seconds else None
    items = [x if isinstance(x, (str, os.PathLike)) else _to_array(x, sr) for x in inputs]
    sizes = [_num_samples(x, sr) for x in items]
    order = sorted(range(len(items)), key=lambda i: sizes[i])
    results: list[Transcript | None] = [None] * len(items)
    short = [i for i in order if limit is None or sizes[i] <= limit]
    for s in range(0, len(short), batch_size):
        idx = short[s : s + batch_size]
        arrays = {i: _to_array(items[i], sr) for i in idx}
        fits = [i for i in idx if limit is None or len(arrays[i]) <= limit]  # a header may understate the length
        if fits:
            batch, lengths = _pad([arrays[i] for i in fits])
            for i, t in zip(fits, transcribe_waveforms(m, batch, lengths, timestamps, rule, confidence)):
                results[i] = t
        for i in set(idx) - set(fits):
            results[i] = _transcribe_long(m, arrays.pop(i), chunk_seconds, timestamps, rule, confidence)
    for i in order[len(short):]:
        results[i] = _transcribe_long(m, _to_array(items[i], sr), chunk_seconds, timestamps, rule, confidence)
    return results  # type: ignore[return-value]


def _transcribe_long(m: "ParakeetTDT", wave: np.ndarray, chunk_seconds: float, timestamps: bool, rule: str,
                     confidence: ConfidenceConfig | None) -> Transcript:
    """One long input: chunks cut at pauses (frame-aligned), one model call each, stitched."""
    sr, frame = m.config.features.sample_rate, frame_samples(m.config)
    pieces = split_points(wave, chunk_seconds, sr, frame)
    parts = []
    for a, b in pieces:
        batch, lengths = _pad([wave[a:b]])
        parts += transcribe_waveforms(m, batch, lengths, timestamps, rule, confidence)
    return stitch(parts, [a for a, _ in pieces], len(wave) / sr, sr, frame,
                  confidence.aggregation if confidence is not None else None)
