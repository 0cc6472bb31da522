"""Where the audio comes from: a folder/prefix on any fsspec filesystem, or a manifest file.

`list_inputs` returns the URIs to transcribe, in a stable (sorted) order, each spelled the way
`open_input` can read it back (`s3://bucket/key`, `/abs/path`, ...). Listing streams the
filesystem's `find` output through an extension filter and keeps only the URI strings, so a
million inputs cost roughly 100 MB of driver memory (see docs/pipeline.md, "Scaling").
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
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
    """`audio_uri` column of a Parquet/CSV/JSONL manifest. Relative entries resolve against the
    manifest's folder; duplicates are dropped (each input is transcribed once)."""
    table = read_manifest_table(uri, storage_options)
    seen: dict[str, None] = {}
    for i, value in enumerate(table.column(URI_COLUMN).to_pylist()):
        if not value:
            raise InputError(f"manifest {uri} row {i}: empty {URI_COLUMN}")
        seen.setdefault(value, None)
    if not seen:
        raise InputError(f"manifest {uri} lists no inputs")
    return list(seen)


def _read_table(f, uri: str) -> pa.Table:
    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            return pq.read_table(f)
        if lower.endswith(".csv"):
            return pa_csv.read_csv(f)
        if lower.endswith(".json"):  # a JSON array of objects
            return pa.Table.from_pylist(json.load(f))
        return pa_json.read_json(f)
    except (pa.ArrowInvalid, json.JSONDecodeError, TypeError) as e:
        raise InputError(f"manifest {uri} cannot be parsed: {e}") from e


def _resolve(value: str, base: str, fs: fsspec.AbstractFileSystem) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    joined = f"{base}/{value}"
    return os.path.abspath(joined) if is_local(fs) and "://" not in base else joined


def read_manifest_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """A whole Parquet/CSV/JSONL manifest (for training also text, duration_s), with relative
    `audio_uri` entries resolved against the manifest's folder (empty entries stay empty)."""
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        table = _read_table(f, uri)
    if URI_COLUMN not in table.column_names:
        raise InputError(f"manifest {uri} has no '{URI_COLUMN}' column (columns: {table.column_names})")
    base = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    resolved = [_resolve(str(v), base, fs) if v else v for v in table.column(URI_COLUMN).to_pylist()]
    return table.set_column(table.column_names.index(URI_COLUMN), URI_COLUMN, pa.array(resolved, pa.string()))
