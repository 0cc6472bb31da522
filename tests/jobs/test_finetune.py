"""Fine-tuning on a real local Ray cluster with Ray Train: 2 CPU workers (DDP over gloo), Ray Data ingest,
tiny models. The runs are observed (and one worker killed) through `finetune.run(callback=...)`, a
parameter these tests own: the callback appends every event to a JSON-lines file per process."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from ray import cloudpickle  # what Ray serialises train_loop_config with

import model
from jobs import finetune
from jobs.cli import main
from pipeline.training.config import TrainConfig
from pipeline.training.schedule import warmup_cosine

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = str(DATA / "nemo" / "tiny_tdt.nemo")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callback travels to the workers by value


def _rows():
    rows = [json.loads(line) for line in (DATA / "audio" / "manifest.jsonl").read_text().splitlines()]
    return [{"audio_uri": str(DATA / "audio" / r["audio"]), "text": r["text"]} for r in rows]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class Recorder:
    """Appends each event (with the pid and whether the crash has happened yet) to folder/events-<pid>.jsonl;
    with `crash=(rank, step, marker)`, that rank exits once at that step, as a lost worker does (a few seconds
    after the step: Ray Train's controller registers a reported checkpoint when it next polls the workers)."""

    def __init__(self, folder, crash=None):
        self.folder, self.crash = str(folder), crash

    def __call__(self, event):
        crashed = self.crash is not None and os.path.exists(self.crash[2])
        with open(os.path.join(self.folder, f"events-{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({**event, "pid": os.getpid(), "t": time.time()}) + "\n")
        if self.crash and event["event"] == "step" and (event["rank"], event["step"]) == self.crash[:2] and not crashed:
            open(self.crash[2], "w").close()
            time.sleep(5)
            os._exit(1)

    def events(self, kind):
        """Events of `kind`; each has `attempt`: 0 for the first worker group, 1 for the one Ray Train restarted."""
        out = []
        for p in sorted(Path(self.folder).glob("events-*.jsonl")):
            out += [e for e in map(json.loads, p.read_text().splitlines())]
        first = {}
        for e in sorted(out, key=lambda e: e["t"]):
            first.setdefault(e["pid"], (e["rank"], e["t"]))
        starts = {}
        for pid, (rank, t) in sorted(first.items(), key=lambda kv: kv[1][1]):
            starts.setdefault(rank, []).append(pid)
        for e in out:
            e["attempt"] = starts[e["rank"]].index(e["pid"])
        return [e for e in out if e["event"] == kind]


def _cfg(train, out, **kw):
    base = dict(train=train, output=str(out), model=MODEL, lr=1e-4, warmup_steps=2, batch_seconds=4.0, buffer_batches=2,
                spec_augment=None, eval_batch_size=8, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_utterance_once_per_epoch_with_equal_steps_and_one_tokenizer(ray_cluster, tmp_path):
    rows = _rows() * 5  # 40 utterances (each a row of its own): two decode blocks at least
    train = _write(tmp_path / "train.jsonl", rows)
    rec = Recorder(tmp_path)
    out = tmp_path / "run"
    cfg = _cfg(train, out, model=None, preset="tiny", vocab_size=48, lr=3e-3, epochs=2, checkpoint_every=None,
               overrides={"encoder": {"subsampling_factor": 4}})  # 4x: a character-level vocabulary keeps T >= U
    assert finetune.run(cfg, workers=2, callback=rec) == 0
    batches = rec.events("batch")
    for epoch in (0, 1):
        used = sorted(u for e in batches if e["epoch"] == epoch for u in e["uids"])
        assert used == list(range(len(rows)))  # each utterance exactly once, across both workers
    steps = rec.events("step")
    per_rank = [sorted(e["step"] for e in steps if e["rank"] == r) for r in (0, 1)]
    assert per_rank[0] == per_rank[1] == list(range(1, len(per_rank[0]) + 1))  # lock-step
    assert {e["rank"] for e in batches} == {0, 1}
    # --preset: one tokenizer, trained on the driver, is what the workers used and saved
    stored = (out / "_plan" / "tokenizer.model").read_bytes()
    assert (out / "last" / "tokenizer.model").read_bytes() == stored
    assert model.load(out / "last").tokenizer.vocab_size <= 48
    epochs = [m for m in _metrics(out) if m["event"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [1, 2] and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory):
    """The 8 good clips plus one row of each kind of bad row (6 kinds, 5 reasons)."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    sf.write(folder / "blip.wav", np.random.default_rng(0).normal(0, 0.1, 1600).astype(np.float32), 16000)  # 0.1 s
    hello, sr = sf.read(DATA / "audio" / "hello.wav", dtype="float32")
    sf.write(folder / "long.wav", np.tile(hello, 6), sr)  # ~15 s, over --max-duration 9
    bad = [
        {"audio_uri": str(folder / "corrupt.wav"), "text": "hello world"},  # unreadable: garbage after the header
        {"audio_uri": str(folder / "missing.wav"), "text": "hello world"},  # unreadable: no such file
        {"audio_uri": str(DATA / "audio" / "fox.wav"), "text": "   "},  # empty text
        {"audio_uri": str(DATA / "audio" / "fox.wav"), "text": "日本語のテキスト"},  # unencodable (<unk> tokens)
        {"audio_uri": str(folder / "blip.wav"), "text": "the quick brown fox jumps over the lazy dog again and again"},  # T < U
        {"audio_uri": str(folder / "long.wav"), "text": "hello world"},  # too long (header duration)
    ]
    rows = _rows()
    mixed = rows[:4] + bad + rows[4:]
    return folder, mixed, {"unreadable": 2, "empty_text": 1, "unencodable_text": 1, "too_short_for_text": 1, "too_long": 1}


def test_bad_rows_are_skipped_and_counted_by_reason(ray_cluster, bad_manifest, tmp_path):
    folder, rows, expected = bad_manifest
    train = _write(tmp_path / "train.jsonl", rows)
    rec = Recorder(tmp_path)
    out = tmp_path / "run"
    cfg = _cfg(train, out, epochs=1, max_duration=9.0, max_bad_fraction=0.5)
    assert finetune.run(cfg, workers=2, callback=rec) == 0
    final = _metrics(out)[-1]
    assert final["skipped"] == expected
    assert final["bad_fraction"] == pytest.approx(6 / 14)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["skipped"] == expected
    assert summary["plan"]["skipped_before_decoding"] == {"empty_text": 1, "too_long": 1}
    good = sorted(i for i, r in enumerate(rows) if r["audio_uri"].startswith(str(DATA / "audio")) and r["text"].isascii()
                  and r["text"].strip())
    assert sorted(u for e in rec.events("batch") for u in e["uids"]) == good


def test_too_many_bad_rows_fail_the_run_with_the_counts(ray_cluster, bad_manifest, tmp_path, capsys):
    folder, rows, _ = bad_manifest
    # before any audio is read: the plan already sees 2 bad rows of 14
    train = _write(tmp_path / "train.jsonl", rows)
    args = ["finetune", "--model", MODEL, "--train", train, "--output", str(tmp_path / "a"), "--max-duration", "9",
            "--epochs", "1", "--batch-seconds", "4"]
    assert main(args) == 2
    assert "over --max-bad-fraction 1.0%" in capsys.readouterr().err
    # found while decoding: 2 unreadable rows of 10 > 10%
    train = _write(tmp_path / "train2.jsonl", _rows() + rows[4:6])
    assert main(args[:4] + [train, "--output", str(tmp_path / "b"), "--max-bad-fraction", "0.1", "--epochs", "1",
                            "--batch-seconds", "4"]) == 1
    err = capsys.readouterr().err
    assert "2 of the 10 training rows are bad" in err and "unreadable" in err


def test_killed_worker_resumes_at_the_last_step_checkpoint(ray_cluster, tmp_path):
    rows = _rows()
    train = _write(tmp_path / "train.jsonl", rows)
    marker = str(tmp_path / "crashed")
    rec = Recorder(tmp_path, crash=(1, 3, marker))
    out = tmp_path / "run"
    cfg = _cfg(train, out, epochs=2, checkpoint_every=2, warmup_steps=3)
    assert finetune.run(cfg, workers=2, max_failures=2, callback=rec) == 0
    assert os.path.exists(marker)  # rank 1 really died, at step 3 of epoch 0
    steps = rec.events("step")
    before = sorted(e["step"] for e in steps if e["rank"] == 0 and e["attempt"] == 0)
    after = sorted(e["step"] for e in steps if e["rank"] == 0 and e["attempt"] == 1)
    assert before[:3] == [1, 2, 3] and after[0] == 3  # the checkpoint of step 2, not the epoch start
    assert after == list(range(3, after[-1] + 1))
    total = _metrics(out)[-1]["total_steps"]
    for e in steps:  # the LR at every step (resumed ones too) is the uninterrupted schedule's
        assert e["lr"] == pytest.approx(cfg.lr * warmup_cosine(e["step"], cfg.warmup_steps, total), rel=1e-9)
    # and epoch 0 still used every utterance exactly once: what steps 1-2 trained, then the rest
    batches = rec.events("batch")
    kept = [u for e in batches if e["epoch"] == 0 and (e["attempt"] == 1 or e["step"] <= 2) for u in e["uids"]]
    assert sorted(kept) == list(range(len(rows)))
    assert sorted(u for e in batches if e["epoch"] == 1 for u in e["uids"]) == list(range(len(rows)))
    history = [m["step"] for m in _metrics(out) if m["event"] == "step"]
    assert history == sorted(history) and len(history) == len(set(history))  # redone steps are not logged twice


def test_keep_checkpoints_best_and_a_step_checkpoint_loads_everywhere(ray_cluster, tmp_path):
    rows = _rows()
    train = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    cfg = _cfg(train, out, val=train, max_steps=5, checkpoint_every=1, val_every=1, keep_checkpoints=2)
    assert finetune.run(cfg, workers=2) == 0
    kept = sorted(p.name for p in (out / "_ray" / "finetune").iterdir() if p.name.startswith("epoch-"))
    assert len(kept) == 2 and [int(k.rsplit("-", 1)[1]) for k in kept][-1] == 5  # the 2 latest (an epoch end may be one)
    assert (out / "best" / "config.json").exists() and not (out / "best" / "trainer_state.pt").exists()
    vals = [m for m in _metrics(out) if "val_wer" in m]
    assert {m["step"] for m in vals} == {1, 2, 3, 4, 5} and any(m["best"] for m in vals)  # every step (and epoch end)
    step4 = out / "_ray" / "finetune" / kept[0]
    assert sorted(p.name for p in step4.glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]
    m = model.load(step4)
    transformers = pytest.importorskip("transformers")
    hf = transformers.ParakeetForTDT.from_pretrained(step4).eval()
    x, n = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    feats, flen = m.preprocessor(x, n)
    with torch.no_grad():
        ours, _ = m.encoder(feats, flen)
        mask = torch.arange(feats.shape[-1])[None] < flen[:, None]
        ref = hf.get_audio_features(input_features=feats.transpose(1, 2), attention_mask=mask)
    assert (ours - ref.last_hidden_state).abs().max() < 1e-4
    # a rerun of the same command continues from the latest checkpoint (Ray Train restores the run)
    assert finetune.run(TrainConfig(**{**cfg.__dict__, "max_steps": 7}), workers=2) == 0
    steps = [m["step"] for m in _metrics(out) if m["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_sharded_nemo_style_manifests_freeze_encoder_and_grad_accum(ray_cluster, tmp_path):
    rows = _rows()
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):  # NeMo's keys, .json lines, durations given: no header is probed
        part = rows[i::2]
        (shards / f"part{i}.json").write_text("".join(
            json.dumps({"audio_filepath": r["audio_uri"], "text": r["text"], "duration": sf.info(r["audio_uri"]).duration}) + "\n"
            for r in part))
    before = model.load(MODEL)
    out = tmp_path / "run"
    rec = Recorder(tmp_path)
    cfg = _cfg(str(shards), out, max_steps=2, grad_accum=2, freeze_encoder=True, lr=1e-3)
    assert finetune.run(cfg, workers=1, callback=rec) == 0
    assert sum(1 for e in rec.events("batch") if e["step"] == 1) == 2  # two micro-batches per optimizer step
    after = model.load(out / "last")
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(before.encoder, after.encoder)  # frozen, BatchNorm statistics included
    assert not same(before.predictor, after.predictor) and not same(before.joint, after.joint)
