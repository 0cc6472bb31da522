"""The Transcriber on plain dict batches, without Ray, against the bare model."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from model.longform import split_points
from pipeline.decode import decode_batch, waveforms
from pipeline.schema import TRANSCRIPT_SCHEMA
from pipeline.transcriber import Transcriber, resolve_device
from tests.pipeline.conftest import AUDIO, CLIPS


def test_texts_and_timestamps_equal_the_bare_model(model_dir, loaded_model, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    uris = [str(AUDIO / c) for c in CLIPS] + [str(tmp_path / "bad.wav")]
    table = Transcriber(model_dir, batch_seconds=12.0)(decode_batch({"audio_uri": np.array(uris, dtype=object)}))
    assert table.schema.names[: len(TRANSCRIPT_SCHEMA)] == TRANSCRIPT_SCHEMA.names
    rows = table.to_pylist()
    ref = loaded_model.transcribe(uris[:-1])
    for row, r in zip(rows, ref):
        assert row["error"] is None and row["model"] == model_dir
        assert row["text"] == r.text
        assert [t["id"] for t in row["tokens"]] == r.token_ids
        assert [w["word"] for w in row["words"]] == [w.text for w in r.words]
        assert [t["start_s"] for t in row["tokens"]] == pytest.approx([t.start for t in r.tokens], abs=1e-5)
    assert rows[-1]["text"] is None and "cannot decode" in rows[-1]["error"]
    assert {r["gpu_ids"] for r in rows} == {""}  # not running under Ray


def test_long_input_is_chunked_and_stitched_on_one_timeline(model_dir, loaded_model):
    clips = waveforms(decode_batch({"audio_uri": np.array([str(AUDIO / c) for c in CLIPS], dtype=object)}))
    pause = np.zeros(8000, np.float32)
    long = np.concatenate([x for c in clips for x in (c, pause)])  # ~28 s
    chunk_s = 7.0
    pieces = split_points(long, chunk_s, 16000, 1280)
    assert len(pieces) >= 4
    batch = {"audio_uri": np.array(["long"], dtype=object), "waveform": [long], "sample_rate": np.array([16000]),
             "error": np.array([None], dtype=object)}
    row = Transcriber(model_dir, chunk_seconds=chunk_s).__call__(batch).to_pylist()[0]
    ref = loaded_model.transcribe([long[s:e] for s, e in pieces])
    assert row["text"] == " ".join(r.text.strip() for r in ref if r.text.strip())
    expected = [t.start + s / 16000 for r, (s, _) in zip(ref, pieces) for t in r.tokens]
    assert [t["start_s"] for t in row["tokens"]] == pytest.approx(expected, abs=1e-4)
    starts = [t["start_s"] for t in row["tokens"]]
    assert starts == sorted(starts) and starts[-1] <= len(long) / 16000
    assert row["duration_s"] == pytest.approx(len(long) / 16000)


@pytest.mark.parametrize("decoding, key", [(None, "bs1"), ("greedy_batch", "bs1"), ("greedy", "greedy_bs1")])
def test_decoding_strategy_override(decoding, key):
    """The checkpoint's strategy by default; --decoding overrides it (NeMo fixtures for both)."""
    import json

    nemo = Path(__file__).resolve().parents[1] / "data" / "nemo"
    ref = json.loads((nemo / "tiny_tdt_ms2.json").read_text())
    uris = [str(AUDIO / c) for c in ref["clips"]]
    table = Transcriber(str(nemo / "tiny_tdt_ms2.nemo"), decoding=decoding)(decode_batch({"audio_uri": np.array(uris, dtype=object)}))
    assert table.column("text").to_pylist() == [r["text"] for r in ref[key]]
    with pytest.raises(ValueError, match="decoding='beam'"):
        Transcriber(str(nemo / "tiny_tdt_ms2.nemo"), decoding="beam")


def test_device_follows_the_gpus_ray_assigned():
    assert resolve_device("auto", []) == "cpu"
    assert resolve_device("cpu", [0]) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"assigned GPU\(s\) \[1\]"):
            resolve_device("auto", [1])


def test_precision_resolves_per_device():
    from pipeline.transcriber import resolve_precision

    assert resolve_precision("auto", "cpu") == torch.float32  # CPU default keeps NeMo-equal outputs
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision='int8'"):
        resolve_precision("int8", "cpu")


def test_bf16_transcriber_keeps_an_exact_front_end_and_the_same_texts():
    """--precision bf16: weights and compute in bf16, the log-mel front end still exactly float32;
    with the bundled trained demo model the transcripts equal the float32 model's on these clips
    (a random-weight model's near-ties would flip), timestamps within one encoder frame."""
    import model

    demo = str(Path(model.__file__).parent / "pretrained" / "parakeet-tdt-demo")
    fp32 = model.load(demo)
    uris = [str(AUDIO / c) for c in CLIPS] + [str(p) for p in sorted((Path(__file__).parents[2] / "examples" / "audio").glob("*.wav"))]
    t = Transcriber(demo, precision="bf16")
    assert t.model.dtype == torch.bfloat16 and t.model.preprocessor.filterbank.dtype == torch.float32
    wave = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9000])
    assert torch.equal(t.model.preprocessor(wave, lengths)[0], fp32.preprocessor(wave, lengths)[0])
    rows = t(decode_batch({"audio_uri": np.array(uris, dtype=object)})).to_pylist()
    ref = fp32.transcribe(uris)
    assert all(r.text for r in ref)
    assert [r["text"] for r in rows] == [r.text for r in ref]
    for row, r in zip(rows, ref):
        assert [x["start_s"] for x in row["tokens"]] == pytest.approx([x.start for x in r.tokens], abs=0.081)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="names threads through Linux's prctl")
def test_the_model_thread_is_named_in_the_os(model_dir):
    from pipeline.transcriber import MODEL_THREAD_NAME

    t = Transcriber(str(model_dir), num_threads=1)
    names = {p.name: (p / "comm").read_text().strip() for p in Path("/proc/self/task").iterdir()}
    assert names[str(t._torch_thread.submit(threading.get_native_id).result())] == MODEL_THREAD_NAME
    assert names[str(threading.get_native_id())] != MODEL_THREAD_NAME  # the caller's thread keeps its name
