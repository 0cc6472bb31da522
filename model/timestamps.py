"""Token, word and segment timestamps from a decoded hypothesis, exactly as NeMo 3.0 computes them
for TDT models with `transcribe(..., timestamps=True)`:

- token i spans frames [frame_i, frame_i + duration_i) (`_compute_offsets_tdt`);
- a punctuation token starts and ends where the previous token ended (`_refine_timestamps_tdt`;
  NeMo saw punctuation predicted long after the word, after a silence);
- words are built from SentencePiece pieces: a piece whose text differs from its decoded text
  (a leading '▁') starts a word, punctuation attaches to the word before (`get_words_offsets`);
- segments end at a word ending in '.', '?' or '!' (`get_segment_offsets`);
- seconds = frame offset * window_stride * subsampling_factor (`process_timestamp_outputs`);
- the text is the decoded ids with one space removed before each punctuation mark.

"Punctuation" is NeMo's set: every Unicode punctuation character of every vocabulary piece that is
not special (`<..>`, `[..]`, '▁..', '##..', blank) — `extract_punctuation_from_vocab`.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Sequence

from .confidence import ConfidenceConfig, aggregate, word_token_groups
from .decoding import Hypothesis
from .records import Segment, Token, Transcript, Word
from .tokenizer import Tokenizer

SEGMENT_DELIMITERS = (".", "?", "!")
WORD_DELIMITER = " "
_SPECIAL = [re.compile(p) for p in (r"^\[.*\]$", r"^<.*>$", r"^##", r"^▁", r"^\s*$")]


def supported_punctuation(pieces: Sequence[str]) -> frozenset[str]:
    """NeMo's `extract_punctuation_from_vocab`."""
    return frozenset(
        ch
        for piece in pieces
        if not any(p.match(piece) for p in _SPECIAL)
        for ch in piece
        if unicodedata.category(ch).startswith("P")
    )


def clean_text(text: str, punctuation: frozenset[str]) -> str:
    """Drop one whitespace before each punctuation mark, as NeMo's decoded text does."""
    if not punctuation:
        return text
    pattern = re.compile(r"(\s)(" + "|".join(re.escape(p) for p in sorted(punctuation)) + ")")
    return pattern.sub(r"\2", text)


def token_offsets(hyp: Hypothesis, tokenizer: Tokenizer, punctuation: frozenset[str]) -> list[dict]:
    """Per token: id, piece, decoded text, start/end frame offsets after punctuation snapping."""
    offsets = []
    for tid, frame, dur in zip(hyp.token_ids, hyp.frames, hyp.durations):
        text = tokenizer.token_text(tid)
        start, end = frame, frame + dur
        if text in punctuation and offsets:  # snap to the previous token's (refined) end
            start = end = offsets[-1]["end"]
        offsets.append({"id": tid, "piece": tokenizer.id_to_piece(tid), "text": text, "start": start, "end": end})
    return offsets


def word_offsets(tokens: list[dict], punctuation: frozenset[str], pieces_to_text: Callable[[list[str]], str]) -> list[dict]:
    """NeMo's `get_words_offsets` for SentencePiece ('bpe') tokenizers, on token_offsets' output."""
    words: list[dict] = []
    built: list[str] = []
    first = 0  # index of the first token of the word being built
    following: list[str | None] = [None] * len(tokens)  # the next token's text that is neither empty nor a space
    for i in range(len(tokens) - 2, -1, -1):
        t = tokens[i + 1]["text"]
        following[i] = t if t and t != WORD_DELIMITER else following[i + 1]
    for i, tok in enumerate(tokens):
        text, piece = tok["text"], tok["piece"]
        is_punct = bool(punctuation) and text in punctuation and text != WORD_DELIMITER
        nxt = following[i]
        starts_word = piece != text or (text == WORD_DELIMITER and nxt not in punctuation)
        if starts_word and not is_punct:
            if built:
                words.append({"word": pieces_to_text(built), "start": tokens[first]["start"], "end": tokens[i - 1]["end"],
                              "first": first, "last": i - 1})
            built = []
            if text != WORD_DELIMITER:
                built.append(piece)
                first = i
        elif is_punct and not built and words:  # punctuation after a finished word: attach it
            words[-1]["end"], words[-1]["last"] = tok["end"], i
            if words[-1]["word"].endswith(" "):
                words[-1]["word"] = words[-1]["word"][:-1]
            words[-1]["word"] += text
        elif is_punct and built:
            if built[-1] in (" ", "_", "▁"):
                built = built[:-1]
            built.append(piece)
        else:
            if not built:
                first = i
            built.append(piece)
    last = len(tokens) - 1
    if not words:
        if built:
            words.append({"word": pieces_to_text(built), "start": tokens[0]["start"], "end": tokens[-1]["end"],
                          "first": 0, "last": last})
    else:
        words[0]["start"] = tokens[0]["start"]
        if built:
            words.append({"word": pieces_to_text(built), "start": tokens[first]["start"], "end": tokens[-1]["end"],
                          "first": first, "last": last})
    return words


def segment_offsets(words: list[dict], delimiters: Sequence[str] = SEGMENT_DELIMITERS) -> list[dict]:
    """NeMo's `get_segment_offsets` without a gap threshold."""
    segments, current, first = [], [], 0
    for i, w in enumerate(words):
        text = w["word"]
        if text and (text[-1] in delimiters or text in delimiters):
            current.append(text)
            segments.append({"segment": " ".join(current), "start": words[first]["start"], "end": w["end"]})
            current, first = [], i + 1
            continue
        current.append(text)
    if current:
        segments.append({"segment": " ".join(current), "start": words[first]["start"], "end": words[-1]["end"]})
    return segments


def build_transcript(
    hyp: Hypothesis,
    tokenizer: Tokenizer,
    window_stride: float,
    subsampling_factor: int,
    audio_seconds: float,
    punctuation: frozenset[str] | None = None,
    timestamps: bool = True,
    confidence: ConfidenceConfig | None = None,
) -> Transcript:
    """Hypothesis -> Transcript record with times in seconds (frame * window_stride * subsampling).
    With `confidence` (and hyp.token_confidence filled by the decoder), tokens, words and the
    utterance carry confidences (model/confidence.py)."""
    if punctuation is None:
        punctuation = supported_punctuation(tokenizer.pieces)
    text = clean_text(tokenizer.decode(list(hyp.token_ids)), punctuation)
    tok_conf = hyp.token_confidence if confidence is not None else ()
    word_conf = _word_confidences(hyp, tokenizer, confidence) if tok_conf else []
    utt_conf = aggregate(word_conf, confidence.aggregation) if word_conf else None
    if not timestamps:
        return Transcript(text=text, duration=audio_seconds, frames=hyp.frames, durations=hyp.durations,
                          confidence=utt_conf, token_confidence=tok_conf)
    sec = lambda frames: frames * window_stride * subsampling_factor  # noqa: E731  (NeMo's order of operations)
    toks = token_offsets(hyp, tokenizer, punctuation)
    pieces_to_text = lambda pieces: tokenizer.decode([tokenizer.piece_to_id(p) for p in pieces])  # noqa: E731
    words = word_offsets(toks, punctuation, pieces_to_text)
    segs = segment_offsets(words)
    if word_conf and len(word_conf) != len(words):  # NeMo raises here; we fall back to our words' token spans
        word_conf = [aggregate(tok_conf[w["first"] : w["last"] + 1], confidence.aggregation) for w in words]
        utt_conf = aggregate(word_conf, confidence.aggregation) if word_conf else None
    tc = tok_conf or (None,) * len(toks)
    wc = word_conf or (None,) * len(words)
    return Transcript(
        text=text,
        tokens=tuple(Token(t["id"], t["text"], sec(t["start"]), sec(t["end"]), c) for t, c in zip(toks, tc)),
        words=tuple(Word(w["word"], sec(w["start"]), sec(w["end"]), c) for w, c in zip(words, wc)),
        segments=tuple(Segment(s["segment"], sec(s["start"]), sec(s["end"])) for s in segs),
        duration=audio_seconds,
        frames=hyp.frames,
        durations=hyp.durations,
        confidence=utt_conf,
        token_confidence=tok_conf,
    )


def _word_confidences(hyp: Hypothesis, tokenizer: Tokenizer, confidence: ConfidenceConfig) -> list[float]:
    """NeMo's word confidences: its SentencePiece word grouping over the token confidences."""
    groups = word_token_groups(hyp.token_ids, tokenizer.pieces, tokenizer.decode)
    return [aggregate([hyp.token_confidence[i] for i in g], confidence.aggregation) for g in groups]
