"""Where the audio comes from: a folder/prefix on any fsspec filesystem, or a manifest file.

`list_inputs` returns the URIs to transcribe, in a stable (sorted) order, each spelled the way
`open_input` can read it back (`s3://bucket/key`, `/abs/path`, ...). Listing streams the
filesystem's `find` output through an extension filter and keeps only the URI strings, so a
million inputs cost roughly 100 MB of driver memory (see docs/pipeline.md, "Scaling").
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

# What `--extensions` defaults to: every container libsndfile decodes (see model/audio.py).
# What libsndfile reads, then what FFmpeg reads (model/audio.py): podcasts, voice notes, phone and meeting
# recordings, video archives, broadcast audio.
DEFAULT_EXTENSIONS = (
    "wav", "flac", "mp3", "ogg", "opus", "oga", "aiff", "aif", "au", "w64", "caf", "rf64",
    "m4a", "m4b", "mp4", "m4v", "aac", "mov", "mkv", "mka", "webm", "wma", "asf", "wmv", "ac3", "eac3",
    "amr", "awb", "3gp", "3g2", "avi", "flv", "ts", "mts", "mpg", "mpeg", "mp2", "spx", "wv", "ape", "dts", "mxf",
)
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json", ".ndjson")
URI_COLUMN = "audio_uri"


class InputError(ValueError):
    """INPUT is missing, empty or malformed; the message names it."""


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for `uri`; credentials come from the usual environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles, ...) plus `storage_options`."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI that names `path` on `fs` (local paths stay plain absolute paths)."""
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def is_manifest(uri: str) -> bool:
    return uri.rstrip("/").lower().endswith(MANIFEST_SUFFIXES)


def normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """'.WAV', 'wav' -> 'wav'; rejects an empty list."""
    exts = tuple(sorted({e.strip().lower().lstrip(".") for e in extensions if e.strip()}))
    if not exts:
        raise InputError("--extensions is empty: give at least one, e.g. wav,flac")
    return exts


def list_inputs(
    input_uri: str, extensions: Iterable[str] = DEFAULT_EXTENSIONS, storage_options: dict[str, Any] | None = None,
    exclude: str | None = None,
) -> list[str]:
    """The audio URIs named by INPUT (a folder/prefix, or a manifest with an `audio_uri` column).

    Every matching file is an input, hidden and `_`-prefixed names included; only the folder `exclude`
    (the job's OUTPUT, when it lies inside INPUT) is left out. Raises InputError when INPUT does not
    exist or names nothing to transcribe.
    """
    fs, path = filesystem(input_uri, storage_options)
    if is_manifest(input_uri):
        if not fs.isfile(path):
            raise InputError(f"manifest {input_uri} does not exist")
        return read_manifest(input_uri, storage_options)
    if fs.isfile(path):
        return [to_uri(fs, path)]
    if not fs.isdir(path):
        raise InputError(f"INPUT {input_uri} does not exist (no such folder, prefix or file)")
    skip = None
    if exclude is not None:
        out_fs, out_path = filesystem(exclude, storage_options)
        if out_fs.protocol == fs.protocol:
            skip = out_path.rstrip("/") + "/"
    uris = sorted(iter_folder(fs, path, normalise_extensions(extensions), skip))
    if not uris:
        raise InputError(f"INPUT {input_uri} holds no files with extensions {', '.join(normalise_extensions(extensions))}")
    return uris


def iter_folder(fs: fsspec.AbstractFileSystem, path: str, extensions: tuple[str, ...], skip: str | None = None) -> Iterator[str]:
    """Every file under `path` (recursively) whose extension is in `extensions`, as URIs; none under `skip`."""
    suffixes = tuple("." + e for e in extensions)
    for name in fs.find(path, withdirs=False):
        if skip is not None and name.startswith(skip):
            continue
        if name.lower().endswith(suffixes):
            yield to_uri(fs, name)


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The audio entries of a Parquet/CSV/JSONL/JSON manifest (`audio_uri`, or NeMo's `audio_filepath`), read a
    batch at a time: only the URIs are kept, whatever else the rows hold. Relative entries resolve against the
    manifest's folder; duplicates are dropped (each input is transcribed once)."""
    seen: dict[str, None] = {}
    row = 0
    for table in iter_manifest_tables(uri, ("audio_uri",), storage_options):
        for value in table.column("audio_uri").to_pylist():
            if not value:
                raise InputError(f"manifest {uri} row {row}: empty {URI_COLUMN}")
            seen.setdefault(value, None)
            row += 1
    if not seen:
        raise InputError(f"manifest {uri} lists no inputs")
    return list(seen)


# What a manifest may hold: our column, then the keys NeMo's manifests use for it; its type; whether it must be there.
MANIFEST_FIELDS = {
    "audio_uri": (("audio_uri", "audio_filepath", "audio_path"), pa.string(), True),
    "text": (("text", "transcript"), pa.string(), True),
    "duration_s": (("duration_s", "duration"), pa.float64(), False),
}


def iter_manifest_tables(uri: str, fields: tuple[str, ...], storage_options: dict[str, Any] | None = None,
                         batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """One manifest file as tables of at most `batch_rows` rows holding `fields` (names of MANIFEST_FIELDS), each
    read from the first of its keys the file has and typed; a field that is not required and absent is null.
    `audio_uri` entries are resolved against the manifest's folder. What every manifest reader shares
    (transcription's `read_manifest`, fine-tuning's plan): memory holds a batch, not the file, and only the
    fields asked for. Other columns are never parsed, so their types may vary from row to row (JSON lines whose
    optional keys are null at first and numbers later). Raises InputError naming the file when it cannot be
    parsed or lacks a required field."""
    fs, path = filesystem(uri, storage_options)
    base = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    lower = uri.lower()
    with fs.open(path, "rb") as f:
        try:
            if lower.endswith(".parquet"):
                tables = _parquet_tables(f, uri, fields, batch_rows)
            elif lower.endswith(".csv"):
                tables = _csv_tables(f, uri, fields)
            else:  # .jsonl/.ndjson, and .json: JSON lines (NeMo's manifests) or one JSON array
                tables = _json_tables(f, uri, fields, batch_rows)
            for table in tables:
                if "audio_uri" in fields:
                    audio = [_resolve(str(v), base, fs) if v else None for v in table.column("audio_uri").to_pylist()]
                    table = table.set_column(table.column_names.index("audio_uri"), "audio_uri", pa.array(audio, pa.string()))
                yield table
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"manifest {uri} cannot be parsed: {e}") from e


def _chosen_keys(names: Iterable[str], uri: str, fields: tuple[str, ...]) -> dict[str, str | None]:
    """field -> the file's key for it (None: absent and not required); InputError for a required one absent."""
    names = list(names)
    keys = {}
    for name in fields:
        aliases, _, required = MANIFEST_FIELDS[name]
        keys[name] = next((a for a in aliases if a in names), None)
        if keys[name] is None and required:
            also = f" (nor {', '.join(aliases[1:])})" if len(aliases) > 1 else ""
            raise InputError(f"manifest {uri} has no '{name}' column{also}; columns: {names}")
    return keys


def _typed(columns: dict[str, list | pa.ChunkedArray | pa.Array], n: int, uri: str) -> pa.Table:
    """Columns (None: absent) cast to their MANIFEST_FIELDS types; a value that does not convert names the file."""
    out = {}
    for name, values in columns.items():
        kind = MANIFEST_FIELDS[name][1]
        if values is None:
            out[name] = pa.nulls(n, kind)
        elif isinstance(values, list):
            out[name] = _from_python(values, kind, name, uri)
        else:
            try:
                out[name] = values.cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"manifest {uri}: column '{name}' is not {kind}: {e}") from e
        if pa.types.is_floating(kind):  # NaN (a CSV or Parquet manifest's missing value) is unknown, as null is
            out[name] = pc.if_else(pc.is_nan(out[name]), None, out[name])
    return pa.table(out)


def _from_python(values: list, kind: pa.DataType, name: str, uri: str) -> pa.Array:
    if kind == pa.string():
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    try:
        return pa.array([None if v is None or v == "" else float(v) for v in values], kind)
    except (TypeError, ValueError) as e:
        raise InputError(f"manifest {uri}: '{name}' is not a number: {e}") from e


def _parquet_tables(f, uri: str, fields: tuple[str, ...], batch_rows: int) -> Iterator[pa.Table]:
    file = pq.ParquetFile(f)
    keys = _chosen_keys(file.schema_arrow.names, uri, fields)
    wanted = sorted({k for k in keys.values() if k is not None})
    for batch in file.iter_batches(batch_size=batch_rows, columns=wanted):
        yield _typed({name: batch.column(key) if key else None for name, key in keys.items()}, batch.num_rows, uri)


def _csv_tables(f, uri: str, fields: tuple[str, ...]) -> Iterator[pa.Table]:
    header = pa_csv.open_csv(f, read_options=pa_csv.ReadOptions(block_size=1 << 16)).schema.names
    f.seek(0)
    keys = _chosen_keys(header, uri, fields)
    wanted = sorted({k for k in keys.values() if k is not None})
    # Only our columns are parsed, with their types given: a streaming reader infers a column's type from its
    # first block (empty cells are nulls either way).
    types = {key: MANIFEST_FIELDS[name][1] for name, key in keys.items() if key is not None}
    convert = pa_csv.ConvertOptions(include_columns=wanted, column_types=types)
    for batch in pa_csv.open_csv(f, read_options=pa_csv.ReadOptions(block_size=1 << 22), convert_options=convert):
        yield _typed({name: batch.column(key) if key else None for name, key in keys.items()}, batch.num_rows, uri)


def _json_tables(f, uri: str, fields: tuple[str, ...], batch_rows: int) -> Iterator[pa.Table]:
    """JSON lines or a JSON array of objects, parsed by the json module a batch at a time: each row may have its
    own keys and types (pyarrow's streaming JSON reader fixes them from its first block)."""
    head = f.read(1 << 10).lstrip()
    f.seek(0)
    if head.startswith(b"["):
        rows = json.load(f)
        if not isinstance(rows, list):
            raise InputError(f"manifest {uri} cannot be parsed: not a JSON array of objects")
        chunks = (rows[i : i + batch_rows] for i in range(0, max(1, len(rows)), batch_rows))
    else:
        chunks = _json_line_chunks(f, batch_rows)
    keys: dict[str, str | None] | None = None
    for chunk in chunks:
        if any(not isinstance(r, dict) for r in chunk):
            bad = next(r for r in chunk if not isinstance(r, dict))
            raise InputError(f"manifest {uri} cannot be parsed: a row is not a JSON object: {str(bad)[:80]}")
        if keys is None:  # the keys are chosen from the first rows' (a row may still lack an optional one)
            keys = _chosen_keys(dict.fromkeys(k for r in chunk for k in r), uri, fields) if chunk else {n: None for n in fields}
        yield _typed({name: [r.get(key) for r in chunk] if key else None for name, key in keys.items()}, len(chunk), uri)


def _json_line_chunks(f, batch_rows: int) -> Iterator[list]:
    chunk = []
    for line in io.TextIOWrapper(f, encoding="utf-8"):
        if line.strip():
            chunk.append(json.loads(line))
            if len(chunk) == batch_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _resolve(value: str, base: str, fs: fsspec.AbstractFileSystem) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    joined = f"{base}/{value}"
    return os.path.abspath(joined) if is_local(fs) and "://" not in base else joined
