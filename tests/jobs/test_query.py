"""query / search / export on output made by the real pipeline (local folder and moto S3)."""
import json
import shutil
from pathlib import Path

import pytest
import s3fs
import srt
import webvtt

from jobs.cli import main
from jobs.query import export_name, normalise
from pipeline.job import TranscribeConfig, run

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = DATA / "nemo" / "tiny_tdt.nemo"  # trained on these clips: its transcripts are the real sentences


@pytest.fixture(scope="module")
def output(ray_cluster, tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    for p in (DATA / "audio").iterdir():
        if p.suffix in (".wav", ".flac"):
            shutil.copy(p, audio / p.name)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # an error row
    out = tmp_path_factory.mktemp("out")
    # the shared test cluster advertises logical GPUs (for pinning tests): run this job on CPU actors
    run(TranscribeConfig(input_uri=str(audio), output_uri=str(out), model_uri=str(MODEL), gpus_per_actor=0, progress=False))
    return out


@pytest.fixture(scope="module")
def s3_output(output, s3_endpoint):
    fs = s3fs.S3FileSystem()
    bucket = "query-test"
    fs.mkdir(bucket)
    fs.put(str(output) + "/", f"{bucket}/out/", recursive=True)
    return f"s3://{bucket}/out"


def test_counts_and_json(output, capsys):
    assert main(["query", str(output), "SELECT count(*) AS n, count(error) AS errors FROM transcripts", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 9, "errors": 1}


def test_word_and_segment_views(output, capsys):
    assert main(["query", str(output), "SELECT word, start_s FROM words WHERE audio_uri LIKE '%fox.wav' ORDER BY word_index",
                 "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["word"] for r in rows] == "The quick brown fox jumps over the lazy dog.".split()
    assert all(a["start_s"] <= b["start_s"] for a, b in zip(rows, rows[1:]))
    assert main(["query", str(output), "SELECT count(*) AS n FROM segments WHERE audio_uri LIKE '%ships.wav'", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "2"]


def test_query_on_s3(s3_output, capsys):
    assert main(["query", s3_output, "SELECT audio_uri FROM transcripts WHERE text LIKE '%fantasy%'", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["audio_uri"].endswith("stereo44k.wav")


def test_table_and_parquet_formats(output, tmp_path, capsys):
    assert main(["query", str(output), "SELECT audio_uri, text FROM transcripts ORDER BY audio_uri"]) == 0
    text = capsys.readouterr().out
    assert "(9 rows)" in text and "audio_uri" in text.splitlines()[0]
    assert main(["query", str(output), "SELECT * FROM words", "--format", "parquet", "--out", str(tmp_path / "w.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "w.parquet").num_rows > 40


def test_search_phrase_with_times(output, s3_output, capsys):
    for where in (str(output), s3_output):
        assert main(["search", where, "the LAZY dog", "--format", "json"]) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(hits) == 1 and hits[0]["audio_uri"].endswith("fox.wav")
        assert 0 < hits[0]["start_s"] < hits[0]["end_s"] <= 3.3
    assert main(["search", str(output), "purple elephants"]) == 0
    assert "no matches" in capsys.readouterr().out


def test_export_srt_and_vtt_parse(output, s3_output, tmp_path, capsys):
    assert main(["export", str(output), "--format", "srt", "--to", str(tmp_path / "srt")]) == 0
    assert "skipped 1 error row" in capsys.readouterr().out
    files = sorted((tmp_path / "srt").iterdir())
    assert len(files) == 8
    subs = list(srt.parse((tmp_path / "srt" / "ships.srt").read_text()))
    assert [s.content.replace("\n", " ") for s in subs] == ["Seven ships sailed east at dawn.", "Nobody saw them go!"]
    assert subs[0].start.total_seconds() == 0 and subs[0].end <= subs[1].start
    assert main(["export", s3_output, "--format", "vtt", "--to", str(tmp_path / "vtt")]) == 0
    captions = webvtt.read(str(tmp_path / "vtt" / "howare.vtt"))
    assert [c.text.replace("\n", " ") for c in captions] == ["How are you today?", "I am fine, thank you!"]
    for fmt in ("json", "txt"):
        assert main(["export", str(output), "--format", fmt, "--to", str(tmp_path / fmt)]) == 0
    assert (tmp_path / "txt" / "fox.txt").read_text().strip() == "The quick brown fox jumps over the lazy dog."
    assert json.loads((tmp_path / "json" / "hello.json").read_text())["text"] == "Hello world, this is a test."


def test_clear_errors(output, tmp_path, capsys):
    assert main(["query", str(output), "SELEC nonsense"]) == 2
    assert capsys.readouterr().err.startswith("error: SQL failed")
    assert main(["query", str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["search", str(tmp_path / "empty"), "x"]) == 2
    assert "no transcripts" in capsys.readouterr().err
    assert main(["query", str(output), "SELECT 1", "--format", "parquet"]) == 2


def test_helpers():
    assert normalise("World,") == "world" and normalise("can't") == "can't"
    taken = set()
    assert export_name("s3://b/a/x.wav", "srt", taken) == "x.srt"
    assert export_name("s3://b/other/x.wav", "srt", taken).startswith("x-")


def _without_confidence(table):
    """The same rows as an output written before confidence existed (no confidence fields anywhere)."""
    import pyarrow as pa

    old_token = pa.struct([("id", pa.int32()), ("text", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32())])
    old_word = pa.struct([("word", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32())])
    rows = table.drop_columns(["confidence"]).to_pylist()
    for r in rows:
        for key in ("tokens", "words"):
            if r[key] is not None:
                r[key] = [{k: v for k, v in x.items() if k != "confidence"} for x in r[key]]
    fields = [f if f.name not in ("tokens", "words") else pa.field(f.name, pa.list_(old_token if f.name == "tokens" else old_word))
              for f in table.schema if f.name != "confidence"]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def test_outputs_from_before_confidence_still_read(output, tmp_path, capsys):
    """Old files (no confidence columns) next to new ones, as a job resumed into an old OUTPUT leaves them;
    and an OUTPUT holding only old files."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = ds.dataset(str(output / "transcripts")).to_table()
    half = table.num_rows // 2
    mixed, old_only = tmp_path / "mixed" / "transcripts", tmp_path / "old" / "transcripts"
    mixed.mkdir(parents=True)
    old_only.mkdir(parents=True)
    pq.write_table(table.slice(0, half), mixed / "part-new.parquet")
    pq.write_table(_without_confidence(table.slice(half)), mixed / "part-old.parquet")
    pq.write_table(_without_confidence(table), old_only / "part-old.parquet")
    new_scored = sum(r["confidence"] is not None for r in table.slice(0, half).to_pylist())
    for out, scored in ((mixed.parent, True), (old_only.parent, False)):
        sql = "SELECT count(*) AS n, count(confidence) AS scored FROM transcripts"
        assert main(["query", str(out), sql, "--format", "json"]) == 0
        counts = json.loads(capsys.readouterr().out)
        assert counts["n"] == 9
        assert counts["scored"] == (new_scored if scored else 0)
        assert main(["query", str(out), "SELECT count(confidence) AS c, count(*) AS n FROM words", "--format", "json"]) == 0
        words = json.loads(capsys.readouterr().out)
        assert words["n"] > 0 and (0 < words["c"] < words["n"] if scored else words["c"] == 0)
        assert main(["search", str(out), "lazy dog", "--format", "json"]) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(hits) == 1
    assert 0 < new_scored < 9


def test_search_and_export_carry_confidence(output, tmp_path, capsys):
    assert main(["search", str(output), "lazy dog", "--format", "json"]) == 0
    hit = json.loads(capsys.readouterr().out.splitlines()[0])
    assert 0.0 < hit["confidence"] <= 1.0
    assert main(["export", str(output), "--format", "json", "--to", str(tmp_path / "j")]) == 0
    doc = json.loads((tmp_path / "j" / "fox.json").read_text())
    assert 0.0 < doc["confidence"] <= 1.0 and all(0.0 <= w["confidence"] <= 1.0 for w in doc["words"])
    assert doc["confidence"] == pytest.approx(min(w["confidence"] for w in doc["words"]))
