import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import InputError, list_inputs, normalise_extensions, read_manifest


def test_folder_listing_filters_extensions_recursively_and_sorts(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.wav", "a.FLAC", "sub/c.mp3", "notes.txt", ".hidden.wav", "_intro.wav", "d.m4a", "e.mp4"):
        (tmp_path / name).write_bytes(b"x")
    uris = list_inputs(str(tmp_path))
    assert uris == sorted(uris)
    # hidden and _-prefixed files are inputs like any other; FFmpeg containers are in the default extensions
    assert [u.rsplit("/", 1)[-1] for u in uris] == [".hidden.wav", "_intro.wav", "a.FLAC", "b.wav", "d.m4a", "e.mp4", "c.mp3"]
    assert list_inputs(str(tmp_path), extensions=["wav"]) == [str(tmp_path / n) for n in (".hidden.wav", "_intro.wav", "b.wav")]


def test_an_output_inside_the_input_is_not_an_input(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "out" / "_tmp").mkdir(parents=True)
    (tmp_path / "out" / "_tmp" / "x.wav").write_bytes(b"x")  # anything under OUTPUT is the job's own
    (tmp_path / "outside.wav").write_bytes(b"x")
    assert list_inputs(str(tmp_path), exclude=str(tmp_path / "out")) == [str(tmp_path / "a.wav"), str(tmp_path / "outside.wav")]
    assert len(list_inputs(str(tmp_path))) == 3


def test_missing_or_empty_input_fails_with_its_name(tmp_path):
    with pytest.raises(InputError, match="does-not-exist"):
        list_inputs(str(tmp_path / "does-not-exist"))
    with pytest.raises(InputError, match="holds no files"):
        list_inputs(str(tmp_path))
    with pytest.raises(InputError, match="extensions"):
        normalise_extensions([" ", ""])


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "json"])
def test_manifests_resolve_relative_entries_and_drop_duplicates(tmp_path, kind):
    rows = [{"audio_uri": "a.wav"}, {"audio_uri": "/abs/b.wav"}, {"audio_uri": "s3://bucket/c.wav"}, {"audio_uri": "a.wav"}]
    path = tmp_path / f"manifest.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        path.write_text("audio_uri\n" + "".join(r["audio_uri"] + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    assert list_inputs(str(path)) == [str(tmp_path / "a.wav"), "/abs/b.wav", "s3://bucket/c.wav"]


def test_manifest_without_the_column_names_it(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.wav"}\n')
    with pytest.raises(InputError, match="no 'audio_uri' column"):
        read_manifest(str(path))


def test_lists_an_s3_prefix(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    for key in ("audio/x.wav", "audio/deep/y.flac", "audio/readme.md"):
        fs.pipe(f"{s3_bucket}/{key}", b"data")
    assert list_inputs(f"s3://{s3_bucket}/audio/") == [f"s3://{s3_bucket}/audio/deep/y.flac", f"s3://{s3_bucket}/audio/x.wav"]
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(f"s3://{s3_bucket}/nothing-here/")
