"""The pseudo-label loop end to end on a real local Ray: transcribe a folder (with confidence), then
fine-tune on that OUTPUT filtered with `--where "confidence >= X"`; error rows are never used."""
import json
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from jobs import finetune
from jobs.cli import main
from pipeline.training.config import TrainConfig
from pipeline.training import plan as training_plan
from pipeline.job import TranscribeConfig, run

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = str(DATA / "nemo" / "tiny_tdt.nemo")  # trained on these clips: real transcripts, real confidences


@pytest.fixture(scope="module")
def transcribed(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    for p in (DATA / "audio").glob("*.wav"):
        shutil.copy(p, folder / p.name)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")  # becomes an error row
    out = tmp_path_factory.mktemp("asr")
    summary = run(TranscribeConfig(input_uri=str(folder), output_uri=str(out), model_uri=MODEL, progress=False,
                                   gpus_per_actor=0, device="cpu"))
    assert summary["errors"] == 1
    return out


def test_finetune_trains_on_the_confident_rows_of_a_transcribe_output(transcribed, tmp_path):
    table = ds.dataset(str(transcribed / "transcripts"), format="parquet").to_table().to_pylist()
    scores = sorted(r["confidence"] for r in table if r["error"] is None)
    threshold = scores[len(scores) // 2]  # about half pass
    expected = sorted(r["audio_uri"] for r in table if r["error"] is None and r["confidence"] >= threshold)
    assert 0 < len(expected) < len(scores)
    out = tmp_path / "ft"
    cfg = TrainConfig(train=str(transcribed), where=f"confidence >= {threshold} AND duration_s BETWEEN 0.5 AND 30",
                      output=str(out), model=MODEL, max_steps=1, lr=1e-5, warmup_steps=1, batch_seconds=30.0,
                      spec_augment=None)
    assert finetune.run(cfg, workers=1) == 0
    selection = json.loads((out / training_plan.SELECTION).read_text())["train"]
    assert selection == {"source": str(transcribed), "where": cfg.where, "rows": len(table), "error_rows": 1,
                         "empty_text_rows": 0, "filtered_out": len(scores) - len(expected), "selected": len(expected)}
    chosen = ds.dataset(str(out / training_plan.SELECTED)).to_table()
    assert sorted(chosen.column("audio_uri").to_pylist()) == expected
    texts = {r["audio_uri"]: r["text"] for r in table}
    assert all(texts[r["audio_uri"]] == r["text"] for r in chosen.to_pylist())
    reported = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert reported[-1]["train_rows"] == len(expected)  # what the workers actually read


def test_query_exports_the_same_selection_as_a_manifest(transcribed, tmp_path, capsys):
    dest = tmp_path / "train.parquet"
    sql = "SELECT audio_uri, text, duration_s FROM transcripts WHERE error IS NULL AND confidence >= 0 ORDER BY audio_uri"
    assert main(["query", str(transcribed), sql, "--format", "parquet", "--out", str(dest)]) == 0
    rows = ds.dataset(str(dest)).to_table().to_pylist()
    assert len(rows) == len(list((DATA / "audio").glob("*.wav"))) and all(r["text"] for r in rows)
    words = tmp_path / "words.json"
    assert main(["query", str(transcribed), "SELECT word, confidence FROM words WHERE confidence IS NOT NULL",
                 "--format", "json", "--out", str(words)]) == 0
    values = [json.loads(line)["confidence"] for line in words.read_text().splitlines()]
    assert values and all(0.0 <= v <= 1.0 for v in values)


def test_bad_where_and_empty_selection_fail_before_training(transcribed, tmp_path, capsys):
    base = ["finetune", "--model", MODEL, "--train", str(transcribed), "--output", str(tmp_path / "o"), "--max-steps", "1"]
    assert main(base + ["--where", "confidence >>> 2"]) == 2
    assert "--where" in capsys.readouterr().err
    assert main(base + ["--where", "confidence > 1.5"]) == 2
    assert "no rows left" in capsys.readouterr().err
