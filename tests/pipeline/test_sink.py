from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from pipeline.schema import TRANSCRIPT_SCHEMA, error_row, to_table
from pipeline.sink import (
    OutputError, TMP_DIR, check_writable, commit_batch, committed_files, read_output, row_index, sweep_tmp,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def rows(*uris):
    return to_table([error_row(u, "AudioDecodeError: test", "m", NOW, duration_s=1.5) for u in uris])


def test_commit_writes_the_schema_and_reports_stats(tmp_path):
    out = str(tmp_path / "out")
    check_writable(out)
    stats = commit_batch(rows("a", "b").append_column("actor_id", [["x", "y"]]), out).to_pylist()
    assert stats[0]["rows"] == 2 and stats[0]["errors"] == 2 and stats[0]["audio_s"] == 3.0
    [path] = committed_files(out)
    assert pq.read_schema(path).remove_metadata() == TRANSCRIPT_SCHEMA
    assert sorted(row_index(out).column("audio_uri").to_pylist()) == ["a", "b"]
    assert list((tmp_path / "out" / TMP_DIR).iterdir()) == []


def test_a_retried_commit_replaces_its_file_instead_of_duplicating(tmp_path):
    out = str(tmp_path / "out")
    check_writable(out)
    commit_batch(rows("a", "b"), out)
    commit_batch(rows("b", "a"), out)  # same rows again, as a retried task would write
    commit_batch(rows("c"), out)
    assert len(committed_files(out)) == 2
    assert sorted(read_output(out).column("audio_uri").to_pylist()) == ["a", "b", "c"]


def test_leftover_temporaries_are_swept_and_never_read(tmp_path):
    out = tmp_path / "out"
    check_writable(str(out))
    (out / TMP_DIR / "half-written.parquet").write_bytes(b"PAR1 partial")
    assert row_index(str(out)).column("audio_uri").to_pylist() == []
    assert sweep_tmp(str(out)) == 1
    assert list((out / TMP_DIR).iterdir()) == []


def test_unwritable_output_fails_with_its_name(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="file/sub"):
        check_writable(str(blocker / "sub"))


def test_commit_on_s3_leaves_only_committed_files(s3_bucket):
    out = f"s3://{s3_bucket}/out"
    check_writable(out)
    commit_batch(rows("s3://x/a.wav"), out)
    assert row_index(out).column("audio_uri").to_pylist() == ["s3://x/a.wav"]
    import s3fs

    assert s3fs.S3FileSystem().find(f"{s3_bucket}/out/{TMP_DIR}") == []
