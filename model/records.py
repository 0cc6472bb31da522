"""Immutable result records. Every time is in seconds from the start of the audio."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    """One emitted token: vocabulary id, its decoded text (as NeMo reports it, no "▁"), start/end in s."""

    id: int
    text: str
    start: float
    end: float
    confidence: float | None = None  # in [0, 1] (model/confidence.py); None when not computed


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float | None = None  # aggregation of its tokens' confidences


@dataclass(frozen=True)
class Segment:
    """A sentence-like span, split after '.', '?' or '!'."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Transcript:
    """What `ParakeetTDT.transcribe` returns for one input.

    `durations` holds the TDT duration (in encoder frames) chosen for each token, and
    `frames` the encoder frame at which each token was emitted; both parallel `tokens`.
    """

    text: str
    tokens: tuple[Token, ...] = ()
    words: tuple[Word, ...] = ()
    segments: tuple[Segment, ...] = ()
    duration: float = 0.0  # seconds of audio
    frames: tuple[int, ...] = ()
    durations: tuple[int, ...] = ()
    confidence: float | None = None  # aggregation of the words' confidences; None if not computed or no words
    token_confidence: tuple[float, ...] = ()  # parallel to tokens (also without timestamps)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]
