"""The output table: one row per input audio file (see README "Output schema")."""
from __future__ import annotations

import pyarrow as pa

# `confidence` (in [0, 1], model/confidence.py) is null when the job ran with --confidence none; outputs
# written before it existed lack the fields, and the query views read both (jobs/query.py).
TOKEN = pa.struct([("id", pa.int32()), ("text", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32()),
                   ("confidence", pa.float32())])
WORD = pa.struct([("word", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32()), ("confidence", pa.float32())])
SEGMENT = pa.struct([("text", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32())])

TRANSCRIPT_SCHEMA = pa.schema(
    [
        pa.field("audio_uri", pa.string(), nullable=False),  # the input as given (URI or path)
        pa.field("duration_s", pa.float64()),  # seconds of audio; null when it could not be decoded
        pa.field("sample_rate", pa.int32()),  # original rate in Hz, before resampling to 16 kHz
        pa.field("text", pa.string()),  # null when error is set
        pa.field("tokens", pa.list_(TOKEN)),
        pa.field("words", pa.list_(WORD)),
        pa.field("segments", pa.list_(SEGMENT)),
        pa.field("confidence", pa.float32()),  # the utterance's: aggregation of its words'; null without words
        pa.field("model", pa.string()),  # the --model the row was made with
        pa.field("error", pa.string()),  # null on success, else "<Kind>: reason"
        pa.field("error_kind", pa.string()),  # null on success, else one of ERROR_KINDS
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

# What `error_kind` says (query by it; `--retry-errors` redoes the RETRYABLE ones):
ERROR_KINDS = {
    "read": "the file could not be read (missing, permission, network)",
    "too_large": "over the input size limit",
    "empty": "0 bytes, or no audio samples",
    "decode": "not audio libsndfile or FFmpeg can decode, or an unreadable header",
    "truncated": "shorter than its header declares, or the decoder stopped mid-stream",
    "no_audio": "a container without an audio stream (a silent video)",
    "not_finite": "NaN or infinite samples",
    "oom": "out of memory on this input alone (after its batch was split)",
}
RETRYABLE_KINDS = ("read", "oom")

# Columns the Transcriber adds for observability; the Parquet sink drops them (not in the table).
DEBUG_COLUMNS = ("actor_id", "gpu_ids")


def transcript_row(audio_uri: str, transcript, sample_rate: int, model: str, processed_at) -> dict:
    """A successful row from a `model.records.Transcript` (times in seconds)."""
    return {
        "audio_uri": audio_uri,
        "duration_s": float(transcript.duration),
        "sample_rate": int(sample_rate),
        "text": transcript.text,
        "tokens": [{"id": t.id, "text": t.text, "start_s": t.start, "end_s": t.end, "confidence": t.confidence}
                   for t in transcript.tokens],
        "words": [{"word": w.text, "start_s": w.start, "end_s": w.end, "confidence": w.confidence} for w in transcript.words],
        "segments": [{"text": s.text, "start_s": s.start, "end_s": s.end} for s in transcript.segments],
        "confidence": transcript.confidence,
        "model": model,
        "error": None,
        "error_kind": None,
        "processed_at": processed_at,
    }


def error_row(audio_uri: str, error: str, model: str, processed_at, duration_s=None, sample_rate=None,
              kind: str = "decode") -> dict:
    """A row for an input that could not be transcribed: `error` says why, `error_kind` which class of fault."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind {kind!r} is not one of {sorted(ERROR_KINDS)}")
    return {
        "audio_uri": audio_uri, "duration_s": duration_s, "sample_rate": sample_rate, "text": None,
        "tokens": None, "words": None, "segments": None, "confidence": None, "model": model, "error": error,
        "error_kind": kind, "processed_at": processed_at,
    }


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with exactly the schema's columns) -> a table with TRANSCRIPT_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=TRANSCRIPT_SCHEMA)
