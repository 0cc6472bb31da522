"""The Parquet sink: exactly-once commits to OUTPUT/transcripts/, and the resume skip-list.

Layout of OUTPUT:
    transcripts/part-<hash>.parquet   committed files: the table (only these are ever read)
    _tmp/<uuid>.parquet               files being written; never read; swept on the next start
    _summary.json                     the last run's summary

Commit protocol (one file per bundle of rows): write the whole file under _tmp/, then move it to
transcripts/. On a local or POSIX filesystem the move is an atomic rename; on S3/GCS it is a
server-side copy, which makes the destination object appear whole or not at all, then a delete
of the temporary. A reader listing transcripts/ therefore never sees a partial file.

The committed name is a hash of the rows' audio_uris, so if Ray retries a write task whose
commit already happened (worker lost after the move), the retry rewrites the same name with the
same rows instead of adding a duplicate file.
"""
from __future__ import annotations

import hashlib
import posixpath
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import RETRYABLE_KINDS, TRANSCRIPT_SCHEMA
from .sources import filesystem

TRANSCRIPTS_DIR = "transcripts"
TMP_DIR = "_tmp"
SUMMARY_FILE = "_summary.json"
DEFAULT_ROWS_PER_FILE = 256  # rows per committed Parquet file


class OutputError(OSError):
    """OUTPUT cannot be created or written; the message names it."""


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts)


def committed_name(audio_uris: list[str]) -> str:
    """Deterministic file name for a bundle of rows (see module docstring)."""
    h = hashlib.sha256("\n".join(sorted(audio_uris)).encode()).hexdigest()[:32]
    return f"part-{h}.parquet"


def check_writable(output_uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create OUTPUT/_tmp and write, read back and delete a probe; raise OutputError naming OUTPUT."""
    try:
        fs, root = filesystem(output_uri, storage_options)
        tmp = _join(root, TMP_DIR)
        fs.makedirs(tmp, exist_ok=True)
        fs.makedirs(_join(root, TRANSCRIPTS_DIR), exist_ok=True)
        probe = _join(tmp, f"probe-{uuid.uuid4().hex}")
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot write OUTPUT"; re-raised with its name
        raise OutputError(f"OUTPUT {output_uri} is not writable: {type(e).__name__}: {e}") from e


def sweep_tmp(output_uri: str, storage_options: dict[str, Any] | None = None) -> int:
    """Delete temporaries left by a killed run; returns how many. One job per OUTPUT at a time."""
    fs, root = filesystem(output_uri, storage_options)
    tmp = _join(root, TMP_DIR)
    leftovers = [p for p in fs.find(tmp) if not p.rsplit("/", 1)[-1].startswith("probe-")] if fs.exists(tmp) else []
    for p in leftovers:
        fs.rm(p)
    return len(leftovers)


def committed_files(output_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Paths (inside the filesystem) of every committed Parquet file under OUTPUT/transcripts/."""
    fs, root = filesystem(output_uri, storage_options)
    folder = _join(root, TRANSCRIPTS_DIR)
    if not fs.exists(folder):
        return []
    return sorted(p for p in fs.find(folder) if p.endswith(".parquet"))


INDEX_COLUMNS = ("audio_uri", "error", "error_kind", "processed_at")


def row_index(output_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """(file, audio_uri, error, error_kind, processed_at) of every committed row; only those columns are
    read. Files written before error_kind existed give it as null."""
    fs, _ = filesystem(output_uri, storage_options)
    parts = []
    for path in committed_files(output_uri, storage_options):
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            t = pf.read(columns=[c for c in INDEX_COLUMNS if c in names])
        cols = {c: (t.column(c).cast(TRANSCRIPT_SCHEMA.field(c).type) if c in names
                    else pa.nulls(t.num_rows, TRANSCRIPT_SCHEMA.field(c).type)) for c in INDEX_COLUMNS}
        parts.append(pa.table({"file": pa.array([path] * t.num_rows, pa.string()), **cols}))
    if not parts:
        return pa.table({"file": pa.array([], pa.string()),
                         **{c: pa.array([], TRANSCRIPT_SCHEMA.field(c).type) for c in INDEX_COLUMNS}})
    return pa.concat_tables(parts)


def retryable(index: pa.Table) -> pa.Array:
    """Per row: an error worth transcribing again (error_kind read/oom; rows from before error_kind
    existed: ReadError and TranscribeError, which then also covered failures that were not the input's)."""
    kind = index.column("error_kind")
    legacy = pc.and_(pc.is_null(kind), pc.or_(pc.starts_with(index.column("error"), "ReadError"),
                                              pc.starts_with(index.column("error"), "TranscribeError")))
    return pc.fill_null(pc.or_(pc.is_in(kind, value_set=pa.array(RETRYABLE_KINDS)), legacy), False)


def compact(output_uri: str, storage_options: dict[str, Any] | None = None, index: pa.Table | None = None) -> int:
    """Leave exactly one row per audio_uri: where an input has several (a retried error and its new
    row, or a retry interrupted between its commit and this clean-up), keep a success over an error,
    then the newest; rewrite the files holding the others without them. Returns the rows dropped.
    `index`: OUTPUT's row_index when the caller has just read it."""
    if index is None:
        index = row_index(output_uri, storage_options)
    if index.num_rows == len(pc.unique(index.column("audio_uri"))):
        return 0
    rows = index.to_pylist()
    best: dict[str, dict] = {}
    for r in rows:
        key = (r["error"] is None, r["processed_at"] or 0, r["file"])
        b = best.get(r["audio_uri"])
        if b is None or key > (b["error"] is None, b["processed_at"] or 0, b["file"]):
            best[r["audio_uri"]] = r
    drop: dict[str, list] = {}
    for r in rows:
        if best[r["audio_uri"]] is not r:
            drop.setdefault(r["file"], []).append((r["audio_uri"], r["processed_at"]))
    fs, _ = filesystem(output_uri, storage_options)
    dropped = 0
    for path, losers in drop.items():
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        gone = set(losers)
        keep = [i for i, (u, t) in enumerate(zip(table.column("audio_uri").to_pylist(),
                                                  table.column("processed_at").to_pylist())) if (u, t) not in gone]
        dropped += table.num_rows - len(keep)
        if keep:  # the kept rows are committed under their own name first, then the old file goes
            kept = table.take(pa.array(keep, pa.int64()))
            if set(kept.column_names) == set(TRANSCRIPT_SCHEMA.names):
                kept = kept.select(TRANSCRIPT_SCHEMA.names).cast(TRANSCRIPT_SCHEMA)
            if commit(kept, output_uri, storage_options) == path.rsplit("/", 1)[-1]:
                continue  # same rows, same name: nothing else to remove
        fs.rm(path)
    return dropped


def read_output(output_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every committed row of OUTPUT as one table (for tests and small outputs)."""
    fs, _ = filesystem(output_uri, storage_options)
    tables = []
    for path in committed_files(output_uri, storage_options):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, schema=TRANSCRIPT_SCHEMA))
    return pa.concat_tables(tables) if tables else TRANSCRIPT_SCHEMA.empty_table()


def commit_batch(batch: pa.Table, output_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Ray Data stage (a task): a bundle of transcript rows -> one committed Parquet file.

    Extra columns (the Transcriber's debug columns) are dropped. Returns one stats row per file
    (file, rows, errors, audio seconds), which the driver sums for the progress bar and summary.
    """
    table = batch.select(TRANSCRIPT_SCHEMA.names).cast(TRANSCRIPT_SCHEMA)
    name = commit(table, output_uri, storage_options)
    errors = table.column("error").is_valid()
    durations = table.column("duration_s").fill_null(0.0)
    return pa.table({
        "file": [name],
        "rows": [table.num_rows],
        "errors": [int(pc.sum(errors.cast(pa.int64())).as_py() or 0)],
        "audio_s": [float(pc.sum(durations).as_py() or 0.0)],
    })


def commit(table: pa.Table, output_uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write `table` to OUTPUT/_tmp/, move it into OUTPUT/transcripts/; returns the committed name."""
    fs, root = filesystem(output_uri, storage_options)
    name = committed_name(table.column("audio_uri").to_pylist())
    tmp = _join(root, TMP_DIR, f"{uuid.uuid4().hex}.parquet")
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(tmp, _join(root, TRANSCRIPTS_DIR, name))
    return name
