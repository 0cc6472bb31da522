"""Subtitles and transcripts from one output row: cues from segment and word timestamps, rendered as
SRT, WebVTT, JSON or plain text. Pure functions over plain dicts (a Parquet row as pyarrow gives it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_CUE_SECONDS = 7.0  # a cue longer than this is split at word boundaries
MAX_CUE_CHARS = 84  # two lines of 42 characters (common broadcast guidance)
MAX_LINE_CHARS = 42


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues(row: dict[str, Any]) -> list[Cue]:
    """One cue per segment, split into shorter cues (<= 7 s, <= 84 chars) using the segment's words."""
    words = [w for w in (row.get("words") or []) if w.get("word")]
    out: list[Cue] = []
    for seg in row.get("segments") or []:
        inside = [w for w in words if w["start_s"] >= seg["start_s"] - 1e-6 and w["end_s"] <= seg["end_s"] + 1e-6]
        if not inside or (seg["end_s"] - seg["start_s"] <= MAX_CUE_SECONDS and len(seg["text"]) <= MAX_CUE_CHARS):
            out.append(Cue(seg["start_s"], seg["end_s"], seg["text"]))
            continue
        current: list[dict] = []
        for w in inside:
            text = " ".join(x["word"] for x in current + [w])
            if current and (w["end_s"] - current[0]["start_s"] > MAX_CUE_SECONDS or len(text) > MAX_CUE_CHARS):
                out.append(Cue(current[0]["start_s"], current[-1]["end_s"], " ".join(x["word"] for x in current)))
                current = []
            current.append(w)
        if current:
            out.append(Cue(current[0]["start_s"], current[-1]["end_s"], " ".join(x["word"] for x in current)))
    return [c if c.end > c.start else Cue(c.start, c.start + 0.01, c.text) for c in out]  # players need end > start


def wrap(text: str, width: int = MAX_LINE_CHARS) -> str:
    """Break a cue's text into lines of at most `width` characters at spaces."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return "\n".join(lines)


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(row: dict[str, Any]) -> str:
    return "".join(
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{wrap(c.text)}\n\n" for i, c in enumerate(cues(row), 1)
    )


def to_vtt(row: dict[str, Any]) -> str:
    body = "".join(f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{wrap(c.text)}\n\n" for c in cues(row))
    return "WEBVTT\n\n" + body


def to_json(row: dict[str, Any]) -> str:
    keep = ("audio_uri", "duration_s", "text", "confidence", "words", "segments", "model")  # words carry confidence
    return json.dumps({k: row.get(k) for k in keep}, ensure_ascii=False, indent=1)


def to_txt(row: dict[str, Any]) -> str:
    return (row.get("text") or "") + "\n"


RENDERERS = {"srt": to_srt, "vtt": to_vtt, "json": to_json, "txt": to_txt}
