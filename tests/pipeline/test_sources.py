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


def test_manifests_take_nemo_keys_and_rows_whose_other_keys_vary(tmp_path):
    # NeMo's manifests name the audio audio_filepath; an optional key may be null in the first rows and a number or
    # a string later, or appear only later (pyarrow's streaming JSON reader fixes types from its first block).
    rows = [{"audio_filepath": f"a{i}.wav", "duration": None, "lang": None} for i in range(3)]
    rows += [{"audio_filepath": "b.wav", "duration": 2.5, "lang": "en", "speaker": 7}]
    path = tmp_path / "nemo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list_inputs(str(path)) == [str(tmp_path / f"a{i}.wav") for i in range(3)] + [str(tmp_path / "b.wav")]
    from pipeline.training.plan import iter_manifest

    rows = [{"audio_filepath": "x.wav", "text": "one", "duration": None, "lang": None},
            {"audio_filepath": "y.wav", "transcript": "ignored", "text": 2, "duration": "1.5", "lang": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [r for t in iter_manifest(str(path), batch_rows=1) for r in t.to_pylist()]
    assert got == [{"audio_uri": str(tmp_path / "x.wav"), "text": "one", "duration_s": None},
                   {"audio_uri": str(tmp_path / "y.wav"), "text": "2", "duration_s": 1.5}]


def test_csv_and_parquet_manifests_parse_only_their_own_columns(tmp_path):
    # A column the job does not use is never parsed: here it is empty for the first 4 MB block, text after it; the
    # durations are empty (unknown) in the first block too.
    from pipeline.training.plan import iter_manifest

    n = 300_000
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("notes,audio_uri,text,duration\n")
        for i in range(n):
            f.write(f"{'' if i < n - 10 else 'late text'},clip{i:06d}.wav,hi,{'' if i < n // 2 else '3.5'}\n")
    assert path.stat().st_size > 1 << 22  # more than one of the readers' blocks
    uris = list_inputs(str(path))
    assert len(uris) == n and uris[0] == str(tmp_path / "clip000000.wav")
    durations = [d for t in iter_manifest(str(path)) for d in t.column("duration_s").to_pylist()]
    assert len(durations) == n and durations[0] is None and durations[-1] == 3.5
    pq.write_table(pa.table({"audio_uri": ["p.wav", "q.wav"], "blob": [b"\x00" * 10, None], "n": [1, None]}),
                   tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet")) == [str(tmp_path / "p.wav"), str(tmp_path / "q.wav")]


@pytest.mark.parametrize("content", ['[1, 2]', '{"audio_uri": "a.wav"}\n[3]\n', '{"audio_uri": "a.wav"\n', '{"x": 1}'])
def test_malformed_manifests_name_the_file(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match="bad.jsonl"):
        read_manifest(str(path))


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_reads_a_manifest_in_a_bucket(s3_bucket, kind):
    import io

    import s3fs

    fs = s3fs.S3FileSystem()
    rows = [{"audio_filepath": "clips/a.wav", "text": "x"}, {"audio_filepath": f"s3://{s3_bucket}/b.wav", "text": "y"}]
    if kind == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif kind == "csv":
        data = ("audio_filepath,text\n" + "".join(f"{r['audio_filepath']},{r['text']}\n" for r in rows)).encode()
    else:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    fs.pipe(f"{s3_bucket}/m/manifest.{kind}", data)
    assert list_inputs(f"s3://{s3_bucket}/m/manifest.{kind}") == [f"s3://{s3_bucket}/m/clips/a.wav", f"s3://{s3_bucket}/b.wav"]
