"""`parakeet-ray query | search | export`: read transcription output where it lies (folder or bucket).

DuckDB reads the committed Parquet files (OUTPUT/transcripts/*.parquet) through fsspec, so any
fsspec URI works and DuckDB's own httpfs extension is never needed (nor downloaded). Views:
`transcripts` (one row per input), `words` and `segments` (one row per word / segment).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from typing import Any

MAX_CELL = 60  # characters per cell in --format table


class QueryError(Exception):
    """A clear, one-line user error (exit code 2)."""


def register(subparsers) -> None:
    q = subparsers.add_parser("query", help="run SQL over the transcripts (views: transcripts, words, segments)",
                              description=__doc__.split("\n\n")[0])
    q.add_argument("output", metavar="OUTPUT", help="the transcribe OUTPUT folder or URI")
    q.add_argument("sql", metavar="SQL")
    q.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    q.add_argument("--out", default=None, help="write here instead of stdout (required for parquet)")
    q.add_argument("--storage-options", default=None, help="JSON of fsspec options")
    q.set_defaults(func=_guard(run_query))
    s = subparsers.add_parser("search", help="which files say a phrase, and when (word-level times)")
    s.add_argument("output", metavar="OUTPUT")
    s.add_argument("phrase")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.add_argument("--storage-options", default=None)
    s.set_defaults(func=_guard(run_search))
    e = subparsers.add_parser("export", help="write one subtitle/transcript file per input (srt, vtt, json, txt)")
    e.add_argument("output", metavar="OUTPUT")
    e.add_argument("--format", choices=("srt", "vtt", "json", "txt"), default="srt")
    e.add_argument("--to", required=True, help="destination folder or URI")
    e.add_argument("--storage-options", default=None)
    e.set_defaults(func=_guard(run_export))


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except QueryError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def _options(args) -> dict[str, Any]:
    if not args.storage_options:
        return {}
    try:
        return json.loads(args.storage_options)
    except json.JSONDecodeError as e:
        raise QueryError(f"--storage-options is not valid JSON: {e}") from e


def connect(output: str, storage_options: dict[str, Any] | None = None):
    """A DuckDB connection with views over OUTPUT's committed transcript files."""
    import duckdb
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    except Exception as e:  # unknown protocol, bad options
        raise QueryError(f"{output}: {e}") from e
    root = root.rstrip("/")
    try:
        exists = fs.isdir(root)
    except Exception as e:
        raise QueryError(f"{output}: cannot be read ({type(e).__name__}: {e})") from e
    if not exists:
        raise QueryError(f"{output}: no such folder")
    files = sorted(p for p in fs.glob(f"{root}/transcripts/*.parquet") if not os.path.basename(p).startswith(("_", ".")))
    if not files:
        raise QueryError(f"{output}: no transcripts (expected {output.rstrip('/')}/transcripts/*.parquet)")
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false; SET autoload_known_extensions = false")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)
        files = [f"{protocol}://{p}" for p in files]
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    # union_by_name: files written before a column existed (confidence) read it as null
    con.execute(f"CREATE VIEW _files AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
    types = {name: str(kind) for name, kind, *_ in con.execute("DESCRIBE _files").fetchall()}
    utterance = "" if "confidence" in types else ", CAST(NULL AS FLOAT) AS confidence"
    con.execute(f"CREATE VIEW transcripts AS SELECT *{utterance} FROM _files")
    word_conf = "w.confidence" if "confidence" in types.get("words", "") else "CAST(NULL AS FLOAT)"
    con.execute(
        f"CREATE VIEW words AS SELECT audio_uri, word_index, w.word AS word, w.start_s AS start_s, w.end_s AS end_s, "
        f"{word_conf} AS confidence "
        "FROM (SELECT audio_uri, UNNEST(words) AS w, UNNEST(range(len(words))) AS word_index FROM transcripts WHERE error IS NULL)"
    )
    con.execute(
        "CREATE VIEW segments AS SELECT audio_uri, segment_index, s.text AS text, s.start_s AS start_s, s.end_s AS end_s "
        "FROM (SELECT audio_uri, UNNEST(segments) AS s, UNNEST(range(len(segments))) AS segment_index FROM transcripts WHERE error IS NULL)"
    )
    return con


def run_sql(con, sql: str):
    import duckdb

    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else __import__("pyarrow").table({})
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        raise QueryError(f"SQL failed: {first}") from e


def _table_text(table) -> str:
    cols = table.column_names
    rows = [[_cell(v) for v in r.values()] for r in table.to_pylist()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    out = [line(cols), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out) + f"\n({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n"


def _cell(v: Any) -> str:
    s = "NULL" if v is None else (json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v))
    s = s.replace("\n", " ")
    return s if len(s) <= MAX_CELL else s[: MAX_CELL - 1] + "…"


def run_query(args: argparse.Namespace) -> int:
    con = connect(args.output, _options(args))
    table = run_sql(con, args.sql)
    if args.format == "parquet":
        import pyarrow.parquet as pq

        if not args.out:
            raise QueryError("--format parquet needs --out FILE")
        pq.write_table(table, args.out)
        return 0
    if args.format == "csv":
        import pyarrow.csv as pa_csv

        flat = table.select([c for c in table.column_names if not _nested(table.schema.field(c).type)])
        import io

        buf = io.BytesIO()
        pa_csv.write_csv(flat, buf)
        text = buf.getvalue().decode()
    elif args.format == "json":
        text = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in table.to_pylist())
    else:
        text = _table_text(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _nested(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_struct(t) or pa.types.is_map(t)


def normalise(word: str) -> str:
    """Lower case, letters/digits/apostrophes only: 'World,' -> 'world'."""
    return re.sub(r"[^\w']+", "", word.lower()).strip("'")


def search(con, phrase: str, limit: int = 50) -> list[dict[str, Any]]:
    """Occurrences of `phrase` as consecutive words (case and punctuation ignored), with times."""
    target = [normalise(w) for w in phrase.split() if normalise(w)]
    if not target:
        raise QueryError("the phrase has no words")
    like = " AND ".join("lower(text) LIKE ?" for _ in target)
    candidates = [r[0] for r in con.execute(f"SELECT audio_uri FROM transcripts WHERE error IS NULL AND {like} ORDER BY audio_uri",
                                            [f"%{w}%" for w in target]).fetchall()]
    hits: list[dict[str, Any]] = []
    for uri in candidates:
        words = con.execute("SELECT word, start_s, end_s, confidence FROM words WHERE audio_uri = ? ORDER BY word_index",
                            [uri]).fetchall()
        norm = [normalise(w[0]) for w in words]
        for i in range(len(words) - len(target) + 1):
            if norm[i : i + len(target)] == target:
                lo, hi = max(0, i - 5), min(len(words), i + len(target) + 5)
                scores = [w[3] for w in words[i : i + len(target)]]
                hits.append({"audio_uri": uri, "start_s": round(words[i][1], 3), "end_s": round(words[i + len(target) - 1][2], 3),
                             # the least sure word of the phrase; null for outputs made without confidence
                             "confidence": round(min(scores), 4) if None not in scores else None,
                             "context": " ".join(w[0] for w in words[lo:hi])})
                if len(hits) >= limit:
                    return hits
    return hits


def run_search(args: argparse.Namespace) -> int:
    con = connect(args.output, _options(args))
    hits = search(con, args.phrase, args.limit)
    if args.format == "json":
        sys.stdout.write("".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hits))
    else:
        import pyarrow as pa

        sys.stdout.write(_table_text(pa.Table.from_pylist(hits)) if hits else "no matches\n")
    return 0


def export_name(uri: str, fmt: str, taken: set[str]) -> str:
    """File name for `uri`'s export: its stem, or stem-<hash> when another input has the same stem."""
    stem = os.path.splitext(os.path.basename(uri.rstrip("/")))[0] or "audio"
    name = f"{stem}.{fmt}"
    if name in taken:
        name = f"{stem}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}.{fmt}"
    taken.add(name)
    return name


def run_export(args: argparse.Namespace) -> int:
    import fsspec

    from jobs.subtitles import RENDERERS

    options = _options(args)
    con = connect(args.output, options)
    render = RENDERERS[args.format]
    fs, root = fsspec.core.url_to_fs(args.to, **options)
    fs.makedirs(root, exist_ok=True)
    table = run_sql(con, "SELECT * FROM transcripts ORDER BY audio_uri")
    taken: set[str] = set()
    written = skipped = 0
    for row in table.to_pylist():
        if row["error"] is not None:
            skipped += 1
            continue
        with fs.open(f"{root.rstrip('/')}/{export_name(row['audio_uri'], args.format, taken)}", "w") as f:
            f.write(render(row))
        written += 1
    print(f"exported {written} {args.format} file(s) to {args.to}; skipped {skipped} error row(s)")
    return 0
