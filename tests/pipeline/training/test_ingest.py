"""Training ingest without a cluster: plan building, decode-and-tokenise tasks, bounded bucketing, checkpoint state."""
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from pipeline.sources import InputError
from pipeline.training.config import TrainConfig
from pipeline.training.ingest import MicroBatch, bucket_batches, collate, prepare_batch
from pipeline.training.plan import build_plan, estimate_batches, iter_manifest, manifest_files, train_durations
from pipeline.training.state import RankState, UidSet, load_checkpoint, restore_rng, save_checkpoint
from tests.model.helpers import tiny_model

AUDIO = Path(__file__).resolve().parents[2] / "data" / "audio"


def _rows(n, rng, lo=0.5, hi=12.0):
    return [(i, np.zeros(int(rng.uniform(lo, hi) * 16000), np.float32), np.zeros(3, np.int32), "") for i in range(n)]


def test_bucketing_uses_every_row_once_and_holds_one_buffer():
    rng = np.random.default_rng(0)
    rows = _rows(500, rng)
    held, peak = [], 0

    def stream():
        nonlocal peak
        for r in rows:
            held.append(r)
            yield r

    out = []
    for mb in bucket_batches(stream(), batch_seconds=30.0, buffer_batches=4, rng=random.Random(0)):
        peak = max(peak, sum(len(a) for a in mb.audio))
        out.append(mb)
        assert sum(len(a) for a in mb.audio) == 0 or max(len(a) for a in mb.audio) * len(mb.audio) <= 30 * 16000 or len(mb.audio) == 1
    assert sorted(u for mb in out for u in mb.uids) == list(range(500))
    # a batch is drawn from one buffer: its rows were at most ~4 batches (+ one row) of audio apart in the stream
    pos = {r[0]: i for i, r in enumerate(rows)}
    for mb in out:
        span = rows[min(pos[u] for u in mb.uids): max(pos[u] for u in mb.uids) + 1]
        assert sum(len(r[1]) for r in span) / 16000 <= 4 * 30 + 12


def test_bucketing_skips_used_rows_and_reports_bad_ones():
    rng = np.random.default_rng(1)
    rows = _rows(20, rng, 1.0, 2.0)
    rows[3] = (3, np.zeros(0, np.float32), np.zeros(0, np.int32), "unreadable")
    rows[5] = (5, np.zeros(1600, np.float32), np.zeros(50, np.int32), "")  # 0.1 s for 50 tokens: T < U
    seen = Counter()
    out = list(bucket_batches(iter(rows), 8.0, 2, random.Random(0), skip={0, 1}, on_skip=lambda u, r: seen.update([r]),
                              frames=lambda n: n // 1280))
    assert sorted(u for mb in out for u in mb.uids) == [2, 4] + list(range(6, 20))
    assert seen == {"unreadable": 1, "too_short_for_text": 1}


def test_collate_pads_audio_with_zeros_and_targets_with_blank():
    mb = MicroBatch([7, 8], [np.ones(5, np.float32), np.ones(3, np.float32)], [np.array([1, 2, 3], np.int32), np.array([4], np.int32)])
    b = collate(mb, blank_id=9)
    assert b["audio"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]] and b["lengths"].tolist() == [5, 3]
    assert b["targets"].tolist() == [[1, 2, 3], [4, 9, 9]] and b["target_lengths"].tolist() == [3, 1]


def test_estimate_matches_one_worker_bucketing():
    rng = np.random.default_rng(2)
    durations = rng.uniform(0.5, 15, 3000)
    est = estimate_batches(durations, 60.0, 8, seed=0)
    shuffled = durations[np.random.default_rng(0).permutation(3000)]
    rows = [(i, np.zeros(int(d * 16000), np.float32), np.zeros(1, np.int32), "") for i, d in enumerate(shuffled)]
    assert abs(len(list(bucket_batches(iter(rows), 60.0, 8, random.Random(0)))) - est) <= 2  # rounding of samples
    assert estimate_batches(durations, 60.0, 8, seed=0, world=2) >= est / 2


def test_prepare_batch_decodes_tokenises_and_names_what_is_wrong(tmp_path):
    m = tiny_model(tmp_path / "tok")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100))
    uris = [str(AUDIO / "hello.wav"), str(tmp_path / "bad.wav"), str(AUDIO / "hello.wav"), str(AUDIO / "fox.wav")]
    texts = ["hello world", "hello", "\u65e5\u672c", "hello"]
    out = prepare_batch({"uid": np.arange(4), "audio_uri": np.array(uris, dtype=object), "text": np.array(texts, dtype=object)},
                        {}, m.tokenizer.data, max_duration=3.0)
    assert list(out["reason"]) == ["", "unreadable", "unencodable_text", "too_long"]
    assert len(out["audio"][0]) == sf.info(AUDIO / "hello.wav").frames * 16000 // sf.info(AUDIO / "hello.wav").samplerate
    assert list(out["tokens"][0]) == m.tokenizer.encode("hello world")
    assert out["error"][1] and all(len(a) == 0 for a in out["audio"][1:])


def test_plan_numbers_rows_across_shards_reads_nemo_keys_and_is_reused(tmp_path):
    shards = tmp_path / "m"
    shards.mkdir()
    pq.write_table(pa.table({"audio_uri": ["a.wav", "b.wav"], "text": ["one", " "], "duration_s": [1.0, 2.0]}), shards / "p0.parquet")
    (shards / "p1.json").write_text(json.dumps({"audio_filepath": "/x/c.wav", "text": "three", "duration": 50.0}) + "\n"
                                    + json.dumps({"audio_filepath": "d.wav", "text": "four", "duration": 0.2}) + "\n")
    (shards / "p2.json").write_text(json.dumps([{"audio_uri": "e.wav", "text": "five", "duration_s": 3.0}]))
    (shards / "_skip.jsonl").write_text("not a manifest")
    assert [Path(f).name for f in manifest_files(str(shards))] == ["p0.parquet", "p1.json", "p2.json"]
    assert [Path(f).name for f in manifest_files(str(shards / "p*.json"))] == ["p1.json", "p2.json"]
    cfg = TrainConfig(train=str(shards), output=str(tmp_path / "out"), min_duration=0.5)
    plan = build_plan(cfg)  # every duration given: no header probed, no Ray needed
    assert plan.rows == 5 and plan.skipped == {"empty_text": 1, "too_long": 1, "below_min_duration": 1} and plan.bad == 2
    rows = pq.read_table([s for s in plan.shards][0]).to_pylist()
    assert [r["uid"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["audio_uri"] == str(shards / "a.wav") and rows[2]["audio_uri"] == "/x/c.wav"
    assert train_durations(plan).tolist() == [1.0, 3.0]
    again = build_plan(cfg)
    assert again == plan  # reused, not rebuilt
    with pytest.raises(InputError, match="no 'text' column"):
        list(iter_manifest(_write(tmp_path / "bad.jsonl", {"audio_uri": "a.wav"})))


def _write(path, row):
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def test_uid_set_is_a_set():
    s = UidSet([3, 1, -1])
    s.add(10_000)
    s.update(np.array([1, 2]))
    assert s.array().tolist() == [1, 2, 3, 10_000] and len(s) == 4 and 2 in s and 4 not in s and -1 not in s and 10**9 not in s


def test_checkpoint_state_round_trip(tmp_path):
    m = tiny_model(tmp_path / "tok")
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    save_checkpoint(str(tmp_path), 0, RankState(UidSet([1, 5]), Counter(unreadable=2)), m, {"step": 7, "epoch": 1})
    save_checkpoint(str(tmp_path), 1, RankState(UidSet([2]), Counter(unreadable=1, too_long=1)))
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0)
    restored = load_checkpoint(str(tmp_path), 0)
    assert restored.trainer == {"step": 7, "epoch": 1} and restored.consumed == {1, 2, 5}
    assert restored.skipped == {"unreadable": 3, "too_long": 1}
    restore_rng(restored.mine)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


@pytest.mark.parametrize("output", ["local", "memory://metrics-test"])
def test_metrics_log_appends_locally_throttles_object_stores_and_drops_redone_steps(tmp_path, output):
    import fsspec

    from pipeline.training.loop import _MetricsLog

    out = str(tmp_path / "out") if output == "local" else output
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    fs.pipe(f"{root}/metrics.jsonl", b"".join(json.dumps({"step": s}).encode() + b"\n" for s in (1, 2, 3, 4)))
    log = _MetricsLog(TrainConfig(train="-", output=out), resumed_step=2, rewrite_s=3600)
    read = lambda: [json.loads(x)["step"] for x in fs.cat(f"{root}/metrics.jsonl").decode().splitlines()]  # noqa: E731
    assert read() == [1, 2]  # steps 3-4 are being redone
    log.write({"step": 3})
    assert read() == ([1, 2, 3] if output == "local" else [1, 2])  # an object store waits for the next rewrite
    log.write({"step": 4}, force=True)
    assert read() == [1, 2, 3, 4]
