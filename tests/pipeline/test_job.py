"""End to end on a real local Ray cluster (4 logical CPUs, 2 logical GPUs), local folders and moto S3.

The CLI runs in-process as a user would (`parakeet-ray transcribe ...` == jobs.cli.main([...]));
it joins the session's Ray cluster because Ray is already initialised.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
from ray import cloudpickle  # the serializer Ray itself uses (vendored)

from jobs.cli import main
from pipeline.job import TranscribeConfig, build_dataset, decoded, pending_inputs, transcribed
from pipeline.schema import TRANSCRIPT_SCHEMA
from pipeline.sink import TMP_DIR, committed_files, read_output
from pipeline.transcriber import Transcriber
from tests.pipeline.conftest import AUDIO, CLIPS
from tests.pipeline.corpus import make_bad_corpus

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors get SlowCalls by value

CPU = ["--gpus-per-actor", "0", "--no-progress"]


def transcribe(inp, out, model_dir, *extra) -> int:
    return main(["transcribe", str(inp), str(out), "--model", model_dir, *CPU, *extra])


def assert_matches_model(table, loaded_model, paths_by_uri):
    """Every successful row's text and tokens equal model.transcribe on the same file."""
    ok = [r for r in table.to_pylist() if r["error"] is None]
    ref = loaded_model.transcribe([paths_by_uri[r["audio_uri"]] for r in ok])
    for row, r in zip(ok, ref):
        assert row["text"] == r.text, row["audio_uri"]
        assert [t["id"] for t in row["tokens"]] == r.token_ids
    return len(ok)


def test_local_folder_with_bad_inputs(ray_data, model_dir, loaded_model, audio_dir, tmp_path, capsys):
    expected_errors = make_bad_corpus(audio_dir / "broken")
    (audio_dir / "_intro.wav").write_bytes((audio_dir / CLIPS[0]).read_bytes())  # hidden and _ names are inputs too
    (audio_dir / ".hidden.wav").write_bytes((audio_dir / CLIPS[1]).read_bytes())
    out = tmp_path / "out"
    assert transcribe(audio_dir, out, model_dir, "--batch-seconds", "10", "--rows-per-file", "4") == 0  # default extensions
    table = read_output(str(out))
    uris = table.column("audio_uri").to_pylist()
    assert Counter(uris) == Counter(str(p) for p in audio_dir.rglob("*") if p.is_file())
    by_name = {u.rsplit("/", 1)[-1]: r for u, r in zip(uris, table.to_pylist())}
    for name, (sub, kind) in expected_errors.items():
        assert by_name[name]["text"] is None and sub in by_name[name]["error"], name
        assert by_name[name]["error_kind"] == kind, (name, by_name[name]["error_kind"])
    assert assert_matches_model(table, loaded_model, {u: u for u in uris}) == len(CLIPS) + 2
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["files"] == len(uris) and summary["errors"] == len(expected_errors)
    assert summary["audio_seconds"] > 0 and summary["committed_files"] == len(committed_files(str(out)))
    assert "audio-s/s" in capsys.readouterr().out
    for path in committed_files(str(out)):
        assert pq.read_schema(path).remove_metadata() == TRANSCRIPT_SCHEMA


def test_s3_to_s3_end_to_end(ray_data, model_dir, loaded_model, s3_bucket):
    import s3fs

    from tests.pipeline.corpus import CODEC_BAD

    fs = s3fs.S3FileSystem()
    for name in CLIPS:
        fs.put(str(AUDIO / name), f"{s3_bucket}/audio/{name}")
    good = CODEC_BAD.parent / "good"
    ffmpeg_only = ["example_1.aac.m4a", "example_1.mp4-video.mp4", "example_1.mkv-opus.mkv"]  # PyAV over s3fs files
    for name in ffmpeg_only:
        fs.put(str(good / name), f"{s3_bucket}/audio/{name}")
    fs.put(str(CODEC_BAD / "truncated.m4a"), f"{s3_bucket}/audio/truncated.m4a")
    assert transcribe(f"s3://{s3_bucket}/audio/", f"s3://{s3_bucket}/out", model_dir, "--batch-seconds", "8") == 0
    files = fs.glob(f"{s3_bucket}/out/transcripts/*.parquet")
    table = pq.ParquetDataset(files, filesystem=fs).read()
    names = CLIPS + ffmpeg_only + ["truncated.m4a"]
    assert sorted(table.column("audio_uri").to_pylist()) == sorted(f"s3://{s3_bucket}/audio/{n}" for n in names)
    rows = {r["audio_uri"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows["truncated.m4a"]["error_kind"] == "truncated"
    for n in ffmpeg_only:  # decoded by FFmpeg straight from s3fs file objects: the whole sentence, every container
        assert rows[n]["error"] is None and abs(rows[n]["duration_s"] - 2.924) < 0.05, (n, rows[n]["error"], rows[n]["duration_s"])
    table = table.filter(pa.compute.is_in(table.column("audio_uri"), value_set=pa.array([f"s3://{s3_bucket}/audio/{n}" for n in CLIPS])))
    assert table.column("error").null_count == len(CLIPS)
    assert assert_matches_model(table, loaded_model, {f"s3://{s3_bucket}/audio/{n}": str(AUDIO / n) for n in CLIPS}) == len(CLIPS)
    assert fs.find(f"{s3_bucket}/out/{TMP_DIR}") == []
    assert json.loads(fs.cat(f"{s3_bucket}/out/_summary.json"))["files"] == len(names)


def test_resume_after_limit_and_after_a_killed_run(ray_data, model_dir, audio_dir, tmp_path):
    out = tmp_path / "out"
    assert transcribe(audio_dir, out, model_dir, "--limit", "3", "--rows-per-file", "1") == 0
    first = read_output(str(out)).column("audio_uri").to_pylist()
    assert len(first) == 3 and len(committed_files(str(out))) == 3
    # What a driver killed mid-commit leaves: a half-written temporary. It must be ignored and swept.
    (out / TMP_DIR / "deadbeef.parquet").write_bytes(b"PAR1 half written")
    assert transcribe(audio_dir, out, model_dir) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["skipped_already_done"] == 3 and summary["files"] == len(CLIPS) - 3
    assert summary["swept_temporaries"] == 1
    uris = read_output(str(out)).column("audio_uri").to_pylist()
    assert sorted(uris) == sorted(str(audio_dir / c) for c in CLIPS)  # all present, none twice
    assert transcribe(audio_dir, out, model_dir) == 0  # a third run has nothing to do
    assert json.loads((out / "_summary.json").read_text())["files"] == 0
    assert len(read_output(str(out))) == len(CLIPS)


def test_each_actor_is_pinned_to_its_own_logical_gpu(ray_data, model_dir, audio_dir, tmp_path, monkeypatch):
    from ray.data import DataContext

    # Start both actors before dispatching, so each one gets work (otherwise the first can take it all).
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", 60)
    cfg = TranscribeConfig(str(audio_dir), str(tmp_path / "out"), model_dir, device="cpu", window_rows=1)
    inputs, _ = pending_inputs(cfg)
    ready = decoded(cfg, inputs).materialize()  # all inputs queued at once: both actors get some
    rows = transcribed(cfg, ready, actors=2, gpus_per_actor=1).select_columns(["actor_id", "gpu_ids"]).take_all()
    gpus_by_actor = {r["actor_id"]: r["gpu_ids"] for r in rows}
    assert len(rows) == len(CLIPS)
    assert len(gpus_by_actor) == 2, gpus_by_actor
    assert sorted(gpus_by_actor.values()) == ["0", "1"]


def test_single_thread_cpu_actors_decode_their_own_inputs(ray_data, model_dir, audio_dir, tmp_path):
    """The CPU default (decode_tasks 0): Ray Data fuses decoding into the model actors, so waveforms skip the
    object store. The rows are those of separate decode tasks, error rows included."""
    make_bad_corpus(audio_dir / "broken")
    cfg = TranscribeConfig(str(audio_dir), str(tmp_path / "out"), model_dir, device="cpu", batch_seconds=10,
                           threads_per_actor=1, decode_rows=4, window_rows=8)
    inputs, _ = pending_inputs(cfg)
    runs = {}
    for tasks in (0, 1):
        ds = build_dataset(dataclasses.replace(cfg, decode_tasks=tasks), inputs, actors=1, gpus_per_actor=0.0)
        ds = ds.drop_columns(["actor_id", "gpu_ids", "processed_at"])
        rows = sorted(ds.take_all(), key=lambda r: r["audio_uri"])
        runs[tasks] = rows, "MapBatches(decode_batch)->MapBatches(Transcriber)" in ds.stats()
    (fused, was_fused), (apart, was_apart) = runs[0], runs[1]
    assert was_fused and not was_apart
    assert len(fused) == len(inputs) and sum(r["error"] is not None for r in fused) >= 10
    assert fused == apart


class SlowCalls(Transcriber):
    """Every call takes CALL_S longer, and every actor but the first to start loads LOAD_S longer: what a
    checkpoint of gigabytes does to actors that start at different times."""

    marker = None  # a path: the first actor's constructor creates it
    CALL_S, LOAD_S = 8.0, 2.0

    def __init__(self, *args, **kwargs):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(self.LOAD_S)
        super().__init__(*args, **kwargs)

    def __call__(self, batch):
        time.sleep(self.CALL_S)
        return super().__call__(batch)


def test_an_actor_that_loads_later_still_gets_a_window(ray_data, model_dir, audio_dir, tmp_path):
    """Two windows, two single-thread CPU actors, the second ready seconds after the first: each actor takes one
    window. (With two windows queued per actor, Ray's default, the first actor took both while the second still
    loaded, and Ray Data then stopped the second: the job ran its windows one after the other.)"""
    cfg = TranscribeConfig(str(audio_dir), str(tmp_path / "out"), model_dir, device="cpu", threads_per_actor=1,
                           decode_tasks=0, decode_rows=len(CLIPS) // 2, window_rows=len(CLIPS) // 2)
    inputs, _ = pending_inputs(cfg)
    SlowCalls.marker = str(tmp_path / "first-actor")
    ds = build_dataset(cfg, inputs, actors=2, gpus_per_actor=0.0, transcriber=SlowCalls)
    rows = ds.select_columns(["audio_uri", "actor_id"]).take_all()
    assert sorted(r["audio_uri"] for r in rows) == sorted(str(u) for u in inputs.to_pylist())
    assert len({r["actor_id"] for r in rows}) == 2, Counter(r["actor_id"] for r in rows)
