"""The output table: one row per input audio file (see README "Output schema")."""
from __future__ import annotations

import pyarrow as pa

TOKEN = pa.struct([("id", pa.int32()), ("text", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32())])
WORD = pa.struct([("word", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32())])
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
        pa.field("model", pa.string()),  # the --model the row was made with
        pa.field("error", pa.string()),  # null on success, else "<Kind>: reason"
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)
