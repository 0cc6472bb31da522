"""Long audio: split at quiet points into chunks the model handles, stitch the transcripts back.

Why chunking rather than limited-context attention: full attention over a 1 h file is quadratic
(45,000 encoder frames), and even with local attention the convolutional subsampling front end
holds activations for the whole file (~12 GB at 1 h for the 0.6B model). Chunks of a few minutes
bound memory per call, batch with other inputs, and - split at the quietest 80 ms frame near each
chunk end and aligned to encoder frames - keep timestamps exactly continuous: a token at encoder
frame f of a chunk starting at sample s is at time s / 16000 + f * 0.08 s in the file.
"""
from __future__ import annotations

import numpy as np

from model.records import Segment, Token, Transcript, Word
from model.timestamps import SEGMENT_DELIMITERS

SAMPLE_RATE = 16_000  # Hz
FRAME_SAMPLES = 1280  # 160 hop * 8 subsampling: one encoder frame, 0.08 s
DEFAULT_CHUNK_SECONDS = 300.0  # longer inputs are split into chunks of at most this length
SEARCH_FRACTION = 0.2  # look for the quietest frame in the last 20% of each chunk


def split_points(waveform: np.ndarray, chunk_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering `waveform` (N,), each at most `chunk_seconds` long.

    Boundaries are multiples of FRAME_SAMPLES, placed at the lowest-energy frame in the last
    SEARCH_FRACTION of each chunk, so cuts fall in pauses rather than inside words.
    """
    n = len(waveform)
    limit = int(chunk_seconds * sample_rate) // FRAME_SAMPLES * FRAME_SAMPLES
    if limit < FRAME_SAMPLES:
        raise ValueError(f"chunk_seconds={chunk_seconds} is shorter than one encoder frame (0.08 s)")
    if n <= limit:
        return [(0, n)]
    energy = _frame_energy(waveform)  # (n // FRAME_SAMPLES,)
    ranges, start = [], 0
    while n - start > limit:
        hi = (start + limit) // FRAME_SAMPLES  # last allowed boundary, in frames
        lo = max(start // FRAME_SAMPLES + 1, hi - max(1, int((limit // FRAME_SAMPLES) * SEARCH_FRACTION)))
        # boundary b cuts between frame b-1 and b; pick the quietest frame in [lo, hi) and cut before it
        window = energy[lo:hi]
        cut = (lo + int(np.argmin(window))) * FRAME_SAMPLES if len(window) else hi * FRAME_SAMPLES
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges


def _frame_energy(waveform: np.ndarray) -> np.ndarray:
    frames = len(waveform) // FRAME_SAMPLES
    x = waveform[: frames * FRAME_SAMPLES].astype(np.float64).reshape(frames, FRAME_SAMPLES)  # (F, 1280)
    return (x * x).mean(axis=1)


def stitch(parts: list[Transcript], starts_s: list[float], duration_s: float) -> Transcript:
    """One Transcript from chunk transcripts whose audio began at `starts_s` (seconds).

    Tokens, words and segments are shifted onto the file's timeline; a segment that a chunk
    boundary cut mid-sentence (no '.', '?' or '!' at its end) is merged with the next one.
    """
    tokens, words, segments, texts, frames, durations = [], [], [], [], [], []
    for part, off in zip(parts, starts_s):
        frame_off = round(off * SAMPLE_RATE / FRAME_SAMPLES)
        tokens += [Token(t.id, t.text, t.start + off, t.end + off) for t in part.tokens]
        words += [Word(w.text, w.start + off, w.end + off) for w in part.words]
        shifted = [Segment(s.text, s.start + off, s.end + off) for s in part.segments]
        if segments and shifted and not segments[-1].text.rstrip().endswith(SEGMENT_DELIMITERS):
            last, first = segments.pop(), shifted[0]
            shifted[0] = Segment(f"{last.text} {first.text}", last.start, first.end)
        segments += shifted
        frames += [f + frame_off for f in part.frames]
        durations += list(part.durations)
        if part.text.strip():
            texts.append(part.text.strip())
    return Transcript(
        text=" ".join(texts), tokens=tuple(tokens), words=tuple(words), segments=tuple(segments),
        duration=duration_s, frames=tuple(frames), durations=tuple(durations),
    )
