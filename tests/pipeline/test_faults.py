"""Honest failures on a real local Ray: per-input problems are rows, systematic ones fail the job.

Faults are injected the way a user's own stage would be plugged in: a Transcriber subclass passed to
`pipeline.job.run(..., transcriber=...)` (shipped to the actors by value), never through product code.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections import Counter

import pytest
from ray import cloudpickle  # the serializer Ray itself uses (vendored)

from jobs.cli import main
from pipeline.job import TranscribeConfig, run
from pipeline.sink import read_output
from pipeline.transcriber import Transcriber
from tests.pipeline.conftest import CLIPS

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors get these classes by value


class BuggyTranscriber(Transcriber):
    """A plain bug on one input's batch (an IndexError deep in a stage)."""

    def __call__(self, batch):
        if any("fox" in str(u) for u in batch["audio_uri"]):
            raise IndexError("list index out of range (a bug)")
        return super().__call__(batch)


class CudaAssertTranscriber(Transcriber):
    """What a CUDA device-side assert looks like from Python: a RuntimeError that is not an OOM."""

    def _forward(self, arrays):
        raise RuntimeError("CUDA error: device-side assert triggered")


class OomOnLongInputs(Transcriber):
    """Out of memory for any call holding an input over 3 s: batches split until such an input is alone."""

    def _forward(self, arrays):
        if any(len(a) > 3 * 16000 for a in arrays):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._forward(arrays)


class CrashOnce(Transcriber):
    """The actor process dies once (a lost GPU worker); Ray restarts it and retries the batch."""

    marker = None

    def __call__(self, batch):
        if self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(17)
        return super().__call__(batch)


def _cfg(audio_dir, out, model_dir, **kw):
    return TranscribeConfig(str(audio_dir), str(out), model_dir, gpus_per_actor=0, progress=False, window_rows=1,
                            rows_per_file=1, **kw)


@pytest.mark.parametrize("stage", [BuggyTranscriber, CudaAssertTranscriber])
def test_a_systematic_fault_fails_the_job_and_writes_nothing_for_its_inputs(ray_data, model_dir, audio_dir, tmp_path, stage):
    out = tmp_path / "out"
    with pytest.raises(Exception) as failure:
        run(_cfg(audio_dir, out, model_dir), transcriber=stage)
    assert ("a bug" if stage is BuggyTranscriber else "device-side assert") in str(failure.value)
    written = read_output(str(out)).to_pylist()
    assert all(r["error"] is None for r in written)  # never a permanent error row for a systematic fault
    if stage is BuggyTranscriber:
        assert not any("fox" in r["audio_uri"] for r in written)
    else:
        assert written == []
    summary = run(_cfg(audio_dir, out, model_dir))  # the fix: the real stage; the rerun does the rest
    uris = read_output(str(out)).column("audio_uri").to_pylist()
    assert Counter(uris) == Counter(str(audio_dir / c) for c in CLIPS)  # every input exactly once
    assert summary["skipped_already_done"] == len(written) and summary["files"] == len(CLIPS) - len(written)


def test_out_of_memory_splits_the_batch_and_only_the_culprit_becomes_a_row(ray_data, model_dir, audio_dir, tmp_path):
    from model.audio import decode_audio

    long_ones = {str(audio_dir / c) for c in CLIPS if len(decode_audio(str(audio_dir / c))[0]) > 3 * 16000}
    assert 0 < len(long_ones) < len(CLIPS)
    cfg = TranscribeConfig(str(audio_dir), str(tmp_path / "out"), model_dir, gpus_per_actor=0, progress=False,
                           window_rows=8, batch_seconds=600)
    run(cfg, transcriber=OomOnLongInputs)
    rows = {r["audio_uri"]: r for r in read_output(str(tmp_path / "out")).to_pylist()}
    assert {u for u, r in rows.items() if r["error_kind"] == "oom"} == long_ones
    assert all(r["text"] is not None for u, r in rows.items() if u not in long_ones)


def test_an_actor_that_dies_mid_job_is_restarted_and_nothing_is_lost(ray_data, model_dir, audio_dir, tmp_path):
    marker = tmp_path / "crashed-once"
    stage = type("CrashOnceHere", (CrashOnce,), {"marker": str(marker)})
    run(_cfg(audio_dir, tmp_path / "out", model_dir), transcriber=stage)
    assert marker.exists()  # the actor really died once
    uris = read_output(str(tmp_path / "out")).column("audio_uri").to_pylist()
    assert sorted(uris) == sorted(str(audio_dir / c) for c in CLIPS)


def test_a_model_without_tokenizer_fails_before_ray_starts(model_dir, audio_dir, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / "tokenizer.model").unlink()
    out = tmp_path / "out"
    assert main(["transcribe", str(audio_dir), str(out), "--model", str(broken), "--gpus-per-actor", "0", "--no-progress"]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert not out.exists()  # nothing written, not even the OUTPUT folder


@pytest.mark.parametrize("bad", ["no-such-owner/no-such-model-xyz", "s3://no-such-bucket-parakeet/model.nemo", "/nonexistent/m"])
def test_a_missing_model_fails_fast_naming_it(bad, audio_dir, tmp_path, capsys, s3_endpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["transcribe", str(audio_dir), str(tmp_path / "out"), "--model", bad, "--no-progress"]) == 2
    assert bad in capsys.readouterr().err


def test_retry_errors_replaces_retryable_rows_exactly_once(ray_data, model_dir, audio_dir, tmp_path):
    import json as _json

    from pipeline.sink import commit, row_index

    late = audio_dir.parent / "late.wav"  # listed, but not there yet: a read error
    manifest = tmp_path / "inputs.jsonl"
    uris = [str(audio_dir / c) for c in CLIPS] + [str(late)]
    manifest.write_text("".join(_json.dumps({"audio_uri": u}) + "\n" for u in uris))
    out = tmp_path / "out"
    cfg = TranscribeConfig(str(manifest), str(out), model_dir, gpus_per_actor=0, progress=False, window_rows=8)
    run(cfg, transcriber=OomOnLongInputs)  # long clips: oom rows; late.wav: a read row
    kinds = {r["audio_uri"]: r["error_kind"] for r in read_output(str(out)).to_pylist()}
    assert kinds[str(late)] == "read" and "oom" in kinds.values()
    shutil.copy(audio_dir / CLIPS[0], late)  # the file arrives; memory is enough now
    assert run(cfg).get("files") == 0  # without --retry-errors the error rows are final
    summary = run(TranscribeConfig(**{**cfg.__dict__, "retry_errors": True}))
    rows = read_output(str(out)).to_pylist()
    assert Counter(r["audio_uri"] for r in rows) == Counter(uris)  # one row each: replaced, not added
    assert all(r["error"] is None for r in rows)
    assert summary["replaced_error_rows"] == sum(k is not None for k in kinds.values())
    # a retry killed between committing its rows and removing the old ones leaves duplicates: the next run cleans up
    victim = next(r for r in rows if r["audio_uri"] == str(late))
    from pipeline.schema import error_row, to_table

    commit(to_table([error_row(str(late), "ReadError: file not found", "m", victim["processed_at"].replace(year=2000),
                               kind="read")]), str(out))
    assert row_index(str(out)).num_rows == len(uris) + 1
    run(cfg)
    final = read_output(str(out)).to_pylist()
    assert Counter(r["audio_uri"] for r in final) == Counter(uris) and all(r["error"] is None for r in final)
