"""The driver's part of training ingest: turn the training manifests into a numbered plan, once.

    train manifests (files, a folder or glob of shards, a transcribe OUTPUT) --stream--> OUTPUT/_plan/rows-*.parquet

Each plan row is one manifest row: `uid` (its number, stable across reruns: what resume uses to know
which utterances an epoch has used), `audio_uri`, `text`, `duration_s` (the manifest's, else the file
header's, probed in parallel Ray tasks; never decoded) and `reason` (why it is skipped, or null).
The manifests are streamed in record batches and written shard by shard, so the driver holds one
batch at a time whatever the corpus size. The plan is reused by a rerun with the same inputs.

Rows the plan can already judge are marked here (empty text, duration outside [min, max]); what needs
the audio or the tokenizer is judged by the Ray Data tasks that decode (ingest.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.batching import plan_batches
from pipeline.sources import MANIFEST_SUFFIXES, InputError, filesystem, iter_manifest_tables, to_uri

from .config import BAD_REASONS, TrainConfig

PLAN = "_plan"
SHARD_ROWS = 20_000  # plan rows per shard file (also the unit of one header-probing task)
PROBE_THREADS = 16  # concurrent header reads per probing task (I/O-bound: object-store latency)
SCHEMA = pa.schema([("uid", pa.int64()), ("audio_uri", pa.string()), ("text", pa.string()), ("duration_s", pa.float64()),
                    ("reason", pa.string())])


@dataclass(frozen=True)
class Plan:
    uri: str  # OUTPUT/_plan
    shards: tuple[str, ...]  # its rows-*.parquet files
    rows: int
    skipped: dict[str, int]  # plan-time skips by reason
    audio_seconds: float  # of the rows left to train on, where a duration is known

    @property
    def bad(self) -> int:
        return sum(n for r, n in self.skipped.items() if r in BAD_REASONS)


def manifest_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The manifest files `uri` names: itself, every manifest under a folder, or a glob's matches (sorted)."""
    fs, path = filesystem(uri, storage_options)
    if any(c in path for c in "*?["):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path) if p.lower().endswith(MANIFEST_SUFFIXES) and not _hidden(p, path))
    elif fs.isfile(path):
        found = [path]
    else:
        raise InputError(f"manifest {uri} does not exist")
    if not found:
        raise InputError(f"{uri} holds no manifests ({', '.join(MANIFEST_SUFFIXES)})")
    return [to_uri(fs, p) for p in found]


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith(("_", ".")) for part in path[len(root):].split("/") if part)


def iter_manifest(uri: str, storage_options: dict[str, Any] | None = None, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """One manifest file as tables of at most `batch_rows` rows, columns audio_uri, text, duration_s
    (NeMo's audio_filepath / duration accepted), relative audio paths resolved against the manifest's folder."""
    yield from iter_manifest_tables(uri, ("audio_uri", "text", "duration_s"), storage_options, batch_rows)


def _mark(table: pa.Table, first_uid: int, cfg: TrainConfig) -> pa.Table:
    reasons = []
    for a, t, d in zip(*(table.column(c).to_pylist() for c in ("audio_uri", "text", "duration_s"))):
        if not a:
            reasons.append("unreadable")
        elif not t or not t.strip():
            reasons.append("empty_text")
        elif d is not None and d > cfg.max_duration:
            reasons.append("too_long")
        elif d is not None and d < cfg.min_duration:
            reasons.append("below_min_duration")
        else:
            reasons.append(None)
    uids = pa.array(np.arange(first_uid, first_uid + table.num_rows, dtype=np.int64))
    return pa.table([uids, table.column("audio_uri"), table.column("text"), table.column("duration_s"), pa.array(reasons, pa.string())],
                    schema=SCHEMA)


def _probe_shard(shard: str, storage_options: dict[str, Any], min_duration: float, max_duration: float) -> int:
    """Fill a shard's missing durations from the files' headers (then apply the duration limits); rewrite it."""
    from model.audio import probe_duration

    fs, path = filesystem(shard, storage_options)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    durations = table.column("duration_s").to_pylist()
    reasons = table.column("reason").to_pylist()
    todo = [i for i, (d, r) in enumerate(zip(durations, reasons)) if d is None and r is None]
    uris = table.column("audio_uri").to_pylist()

    def probe(i: int) -> float | None:
        try:
            afs, apath = filesystem(uris[i], storage_options)
            with afs.open(apath, "rb") as af:
                return probe_duration(af)
        except Exception:  # noqa: BLE001 - unreadable here: the decode task gives the row its reason
            return None

    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        for i, d in zip(todo, pool.map(probe, todo)):
            durations[i] = d
            if d is not None and d > max_duration:
                reasons[i] = "too_long"
            elif d is not None and d < min_duration:
                reasons[i] = "below_min_duration"
    table = table.set_column(3, "duration_s", pa.array(durations, pa.float64())).set_column(4, "reason", pa.array(reasons, pa.string()))
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return len(todo)


def build_plan(cfg: TrainConfig, source: str | None = None) -> Plan:
    """Write (or reuse) OUTPUT/_plan for `source` (default cfg.train). Needs Ray when durations must be probed."""
    source = source or cfg.train
    files = manifest_files(source, cfg.storage_options)
    out_fs, out_root = filesystem(cfg.output, cfg.storage_options)
    root = f"{out_root.rstrip('/')}/{PLAN}"
    key = _plan_key(cfg, files)
    meta_path = f"{root}/plan.json"
    if out_fs.exists(meta_path):
        with out_fs.open(meta_path, "r") as f:
            meta = json.load(f)
        if meta.get("key") == key:
            return _from_meta(meta)
        out_fs.rm(root, recursive=True)
    out_fs.makedirs(root, exist_ok=True)
    shards, uid, pending, missing = [], 0, [], 0

    def flush():
        nonlocal pending
        if pending:
            table = pa.concat_tables(pending)
            name = f"{root}/rows-{len(shards):05d}.parquet"
            with out_fs.open(name, "wb") as f:
                pq.write_table(table, f)
            shards.append((to_uri(out_fs, name), table.column("duration_s").null_count))
            pending = []

    for manifest in files:
        for table in iter_manifest(manifest, cfg.storage_options):
            pending.append(_mark(table, uid, cfg))
            uid += table.num_rows
            if sum(t.num_rows for t in pending) >= SHARD_ROWS:
                flush()
    flush()
    if uid == 0:
        raise InputError(f"--train {source}: the manifests hold no rows")
    to_probe = [s for s, nulls in shards if nulls]
    if to_probe:
        import ray

        probe = ray.remote(num_cpus=0.25)(_probe_shard)
        missing = sum(ray.get([probe.remote(s, cfg.storage_options, cfg.min_duration, cfg.max_duration) for s in to_probe]))
        print(f"plan: probed {missing} file headers for durations the manifests did not give")
    meta = _summarise(cfg, [s for s, _ in shards], key, to_uri(out_fs, root))
    with out_fs.open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return _from_meta(meta)


def _plan_key(cfg: TrainConfig, files: list[str]) -> str:
    fs, _ = filesystem(files[0], cfg.storage_options)
    listing = [(f, fs.size(filesystem(f, cfg.storage_options)[1])) for f in files]
    raw = json.dumps([listing, cfg.min_duration, cfg.max_duration])
    return hashlib.sha256(raw.encode()).hexdigest()


def _summarise(cfg: TrainConfig, shards: list[str], key: str, uri: str) -> dict[str, Any]:
    """Counts, read from the shards' small columns one shard at a time."""
    skipped, rows, seconds = Counter(), 0, 0.0
    for shard in shards:
        fs, path = filesystem(shard, cfg.storage_options)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["duration_s", "reason"])
        rows += t.num_rows
        reasons = t.column("reason").to_pylist()
        skipped.update(r for r in reasons if r)
        seconds += sum(d for d, r in zip(t.column("duration_s").to_pylist(), reasons) if r is None and d is not None)
    return {"key": key, "uri": uri, "shards": shards, "rows": rows, "skipped": dict(skipped), "audio_seconds": seconds}


def _from_meta(meta: dict[str, Any]) -> Plan:
    return Plan(uri=meta["uri"], shards=tuple(meta["shards"]), rows=meta["rows"], skipped=meta["skipped"],
                audio_seconds=meta["audio_seconds"])


def estimate_batches(durations: np.ndarray, batch_seconds: float, buffer_batches: int, seed: int, world: int = 1) -> int:
    """Micro-batches of the busiest worker in one epoch, when shuffled rows are dealt to `world` workers
    and each buckets its share buffer by buffer (ingest.bucket_batches). The LR schedule's length comes
    from it; exact for one worker with a full shuffle, an estimate otherwise (the split is dynamic)."""
    shuffled = durations[np.random.default_rng(seed).permutation(len(durations))]
    return max(max(_bucketed(shuffled[r::world], batch_seconds, buffer_batches) for r in range(world)), 1)


def _bucketed(durations: np.ndarray, batch_seconds: float, buffer_batches: int) -> int:
    total, buf, held, budget = 0, [], 0.0, buffer_batches * batch_seconds
    for d in durations.tolist():
        buf.append(d)
        held += d
        if held >= budget:
            total += len(plan_batches(buf, batch_seconds))
            buf, held = [], 0.0
    return total + (len(plan_batches(buf, batch_seconds)) if buf else 0)


def train_durations(plan: Plan, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Seconds of every row left to train on (unknown ones as the median), read shard by shard."""
    out = []
    for shard in plan.shards:
        fs, path = filesystem(shard, storage_options)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["duration_s", "reason"])
        out.extend(d for d, r in zip(t.column("duration_s").to_pylist(), t.column("reason").to_pylist()) if r is None)
    known = [d for d in out if d is not None]
    fill = float(np.median(known)) if known else 10.0  # no header said: count as the median
    return np.array([fill if d is None else d for d in out], dtype=np.float64)


def iter_texts(plan: Plan, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """The text of every trainable plan row, shard by shard (what a from-scratch tokenizer learns from)."""
    for shard in plan.shards:
        fs, path = filesystem(shard, storage_options)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["text", "reason"])
        yield from (x for x, r in zip(t.column("text").to_pylist(), t.column("reason").to_pylist()) if r is None)


def plan_tokenizer(cfg: TrainConfig, plan: Plan):
    """--preset: train the SentencePiece tokenizer once, on the driver, and keep it in OUTPUT/_plan
    (a rerun reuses it); every worker and decode task gets its bytes."""
    import tempfile

    from model.tokenizer import SPM_FILE, Tokenizer, train_sentencepiece

    fs, root = filesystem(plan.uri, cfg.storage_options)
    stored = f"{root}/{SPM_FILE}"
    if fs.exists(stored):
        with fs.open(stored, "rb") as f:
            return Tokenizer(data=("spm", f.read()))
    texts = iter_texts(plan, cfg.storage_options)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_sentencepiece(texts, tmp, cfg.vocab_size)
    with fs.open(stored, "wb") as f:
        f.write(tok.data[1])
    return tok


# --- transcribe OUTPUTs and --where: resolved into a manifest under OUTPUT before planning -------------

SELECTED = "train_selected.parquet"  # the rows a run trains on, when --train is a transcribe OUTPUT or --where is given
SELECTION = "train_selection.json"  # how they were chosen, and how many rows each rule dropped


def select_training_rows(cfg: TrainConfig) -> TrainConfig:
    """Resolve --train / --val that are transcribe OUTPUTs, and --where, into manifests under OUTPUT.

    A transcribe OUTPUT trains on its successful rows (`error IS NULL`, non-empty text) that match
    `cfg.where`; a manifest is filtered by `cfg.where` the same way (its columns form the `transcripts`
    view). The selection is written to OUTPUT/train_selected.parquet (what the plan reads) with its
    counts in OUTPUT/train_selection.json.
    """
    from jobs.query import QueryError, connect, run_sql

    fs, root = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    changes = {}
    for field_name, where in (("train", cfg.where), ("val", None)):
        source = getattr(cfg, field_name)
        if source is None:
            continue
        is_output = is_transcribe_output(source, cfg.storage_options)
        if not is_output and where is None:
            continue
        if is_output:
            try:
                con = connect(source, cfg.storage_options)
            except QueryError as e:
                raise InputError(str(e)) from e
            total = con.execute("SELECT count(*) FROM transcripts").fetchall()[0][0]
            errors = con.execute("SELECT count(*) FROM transcripts WHERE error IS NOT NULL").fetchall()[0][0]
            usable = "error IS NULL AND text IS NOT NULL AND trim(text) <> ''"
        else:
            import duckdb

            con = duckdb.connect()
            tables = [t for f in manifest_files(source, cfg.storage_options) for t in iter_manifest(f, cfg.storage_options)]
            con.register("transcripts", pa.concat_tables(tables))
            total, errors, usable = con.execute("SELECT count(*) FROM transcripts").fetchall()[0][0], 0, "TRUE"
        empty = con.execute(f"SELECT count(*) FROM transcripts WHERE NOT ({usable})").fetchall()[0][0] - errors
        columns = [r[0] for r in con.execute("DESCRIBE transcripts").fetchall()]
        wanted = "audio_uri, text" + (", duration_s" if "duration_s" in columns else "")
        sql = f"SELECT {wanted} FROM transcripts WHERE {usable}"
        if where:
            sql += f" AND ({where})"
        try:
            table = run_sql(con, sql + " ORDER BY audio_uri")
        except QueryError as e:
            raise InputError(f"--where {where!r}: {e}") from e
        kept = table.num_rows
        if not kept:
            raise InputError(f"--{field_name} {source}: no rows left to train on ({total} rows, {errors} errors"
                             + (f", --where {where!r}" if where else "") + ")")
        name = SELECTED if field_name == "train" else f"val_{SELECTED}"
        with fs.open(f"{root}/{name}", "wb") as f:
            pq.write_table(table, f)
        counts = {"source": source, "where": where, "rows": total, "error_rows": errors, "empty_text_rows": empty,
                  "filtered_out": total - errors - empty - kept, "selected": kept}
        changes[field_name] = (cfg.output.rstrip("/") + "/" + name, counts)
        print(f"{field_name}: {kept} of {total} rows from {source} ({errors} error rows never used"
              + (f", {counts['filtered_out']} not matching --where" if where else "") + ")")
    if not changes:
        return cfg
    with fs.open(f"{root}/{SELECTION}", "w") as f:
        f.write(json.dumps({k: v[1] for k, v in changes.items()}, indent=2))
    return dataclasses.replace(cfg, **{k: v[0] for k, v in changes.items()})


def is_transcribe_output(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """A folder with transcripts/*.parquet (what `parakeet-ray transcribe` writes)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.isdir(f"{path.rstrip('/')}/transcripts") and bool(fs.glob(f"{path.rstrip('/')}/transcripts/*.parquet"))


def read_rows(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A (small) manifest's rows, whole: for the validation set, which rank 0 keeps decoded."""
    return [r for f in manifest_files(uri, storage_options) for t in iter_manifest(f, storage_options) for r in t.to_pylist()]

