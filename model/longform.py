"""Long audio: split at quiet points into chunks the model handles, stitch the transcripts back.

`ParakeetTDT.transcribe` and the pipeline's Transcriber both chunk inputs longer than
`chunk_seconds` (DEFAULT_CHUNK_SECONDS) with these functions. Why chunking rather than only
limited-context attention: full attention over a 1 h file is quadratic (45,000 encoder frames), and
even local attention needs the whole file's activations in every layer. Chunks of a few minutes
bound memory per call, batch with other inputs, and - split at the quietest encoder frame near each
chunk end and aligned to encoder frames - keep timestamps exactly continuous: a token at encoder
frame f of a chunk starting at sample s is at time s / rate + f * seconds_per_frame in the file.
The frame geometry comes from the model config (`frame_samples = hop_length * subsampling_factor`:
1280 samples = 0.08 s for every Parakeet model).
"""
from __future__ import annotations

import numpy as np

from .confidence import aggregate
from .records import Segment, Token, Transcript, Word
from .timestamps import SEGMENT_DELIMITERS

DEFAULT_CHUNK_SECONDS = 300.0  # longer inputs are split into chunks of at most this length
SEARCH_FRACTION = 0.2  # look for the quietest frame in the last 20% of each chunk


def frame_samples(config) -> int:
    """Samples per encoder frame of a ModelConfig: hop_length * subsampling_factor (160 * 8 = 1280)."""
    return config.features.hop_length * config.encoder.subsampling_factor


def chunk_limit(chunk_seconds: float, sample_rate: int, frame: int) -> int:
    """The longest chunk in samples: `chunk_seconds` rounded down to whole encoder frames."""
    limit = int(chunk_seconds * sample_rate) // frame * frame
    if limit < frame:
        raise ValueError(f"chunk_seconds={chunk_seconds} is shorter than one encoder frame ({frame / sample_rate} s)")
    return limit


def split_points(waveform: np.ndarray, chunk_seconds: float, sample_rate: int, frame: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering `waveform` (N,), each at most `chunk_seconds` long.

    `frame`: samples per encoder frame (`frame_samples(config)`). Boundaries are multiples of it,
    placed at the lowest-energy frame in the last SEARCH_FRACTION of each chunk, so cuts fall in
    pauses rather than inside words.
    """
    n = len(waveform)
    limit = chunk_limit(chunk_seconds, sample_rate, frame)
    if n <= limit:
        return [(0, n)]
    energy = _frame_energy(waveform, frame)  # (n // frame,)
    ranges, start = [], 0
    while n - start > limit:
        hi = (start + limit) // frame  # last allowed boundary, in frames
        lo = max(start // frame + 1, hi - max(1, int((limit // frame) * SEARCH_FRACTION)))
        # boundary b cuts between frame b-1 and b; pick the quietest frame in [lo, hi) and cut before it
        window = energy[lo:hi]
        cut = (lo + int(np.argmin(window))) * frame if len(window) else hi * frame
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges


ENERGY_BLOCK_FRAMES = 1024  # frames per float64 block (10 MB at 1280 samples a frame)


def _frame_energy(waveform: np.ndarray, frame: int) -> np.ndarray:
    """Mean square per encoder frame, (F,) float64, in blocks: a float64 copy of an hour of audio is 460 MB."""
    frames = len(waveform) // frame
    x = waveform[: frames * frame].reshape(frames, frame)  # (F, frame), a view
    energy = np.empty(frames, np.float64)
    for a in range(0, frames, ENERGY_BLOCK_FRAMES):
        block = x[a : a + ENERGY_BLOCK_FRAMES].astype(np.float64)
        energy[a : a + len(block)] = np.einsum("ij,ij->i", block, block) / frame
    return energy


def stitch(parts: list[Transcript], starts: list[int], duration_s: float, sample_rate: int, frame: int,
           aggregation: str | None = None) -> Transcript:
    """One Transcript from chunk transcripts whose audio began at sample `starts` (multiples of `frame`).

    Tokens, words and segments are shifted onto the file's timeline; a segment that a chunk
    boundary cut mid-sentence (no '.', '?' or '!' at its end) is merged with the next one.
    `aggregation`: the confidence aggregation, to score the whole input from its words (None: no score).
    """
    tokens, words, segments, texts, frames, durations, token_conf = [], [], [], [], [], [], []
    for part, start in zip(parts, starts):
        off, frame_off = start / sample_rate, start // frame
        tokens += [Token(t.id, t.text, t.start + off, t.end + off, t.confidence) for t in part.tokens]
        words += [Word(w.text, w.start + off, w.end + off, w.confidence) for w in part.words]
        token_conf += list(part.token_confidence)
        shifted = [Segment(s.text, s.start + off, s.end + off) for s in part.segments]
        if segments and shifted and not segments[-1].text.rstrip().endswith(SEGMENT_DELIMITERS):
            last, first = segments.pop(), shifted[0]
            shifted[0] = Segment(f"{last.text} {first.text}", last.start, first.end)
        segments += shifted
        frames += [f + frame_off for f in part.frames]
        durations += list(part.durations)
        if part.text.strip():
            texts.append(part.text.strip())
    scores = [w.confidence for w in words if w.confidence is not None]
    if aggregation is not None and not words:  # no timestamps: the parts' scores stand for their words
        scores = [p.confidence for p in parts if p.confidence is not None]
    return Transcript(
        text=" ".join(texts), tokens=tuple(tokens), words=tuple(words), segments=tuple(segments),
        duration=duration_s, frames=tuple(frames), durations=tuple(durations),
        confidence=aggregate(scores, aggregation) if aggregation is not None and scores else None,
        token_confidence=tuple(token_conf),
    )
