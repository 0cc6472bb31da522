"""Fine-tuning on a real local Ray cluster with Ray Train: 2 CPU workers (DDP over gloo), a tiny model."""
import json
from pathlib import Path

import pytest
import torch

import model
from jobs import finetune
from jobs.train_loop import TrainConfig

DATA = Path(__file__).resolve().parents[1] / "data" / "audio"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifest")
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"audio_uri": str(DATA / r["audio"]), "text": r["text"]}) + "\n" for r in rows))
    return str(path)


def _cfg(manifest, out, **kw):
    base = dict(train=manifest, val=manifest, output=str(out), preset="tiny", vocab_size=48, lr=3e-3,
                warmup_steps=2, batch_seconds=7.0, spec_augment=None, eval_batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_two_workers_lower_the_loss_and_checkpoints_load(ray_cluster, manifest, tmp_path):
    out = tmp_path / "run"
    assert finetune.run(_cfg(manifest, out, epochs=4), workers=2) == 0
    m = model.load(out / "last")
    assert m.config.vocab_size == m.tokenizer.vocab_size
    final = _metrics(out)
    assert final["epoch"] == 4
    first = model.load(out / "best")  # loads too
    transformers = pytest.importorskip("transformers")
    hf = transformers.ParakeetForTDT.from_pretrained(out / "last").eval()
    x, n = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    feats, flen = m.preprocessor(x, n)
    with torch.no_grad():
        ours, _ = m.encoder(feats, flen)
        mask = torch.arange(feats.shape[-1])[None] < flen[:, None]
        ref = hf.get_audio_features(input_features=feats.transpose(1, 2), attention_mask=mask)
    assert (ours - ref.last_hidden_state).abs().max() < 1e-4
    assert first is not None
    losses = [json.loads(line)["train_loss"] for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_rerun_resumes_from_saved_step(ray_cluster, manifest, tmp_path):
    out = tmp_path / "run"
    assert finetune.run(_cfg(manifest, out, max_steps=2), workers=2) == 0
    assert _metrics(out)["step"] == 2
    assert finetune.run(_cfg(manifest, out, max_steps=4), workers=2) == 0
    steps = [json.loads(line)["step"] for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert steps[0] == 2 and steps[-1] == 4  # the second run started at step 2, not 0


def test_killed_worker_is_recovered(ray_cluster, manifest, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(finetune.CRASH_ENV, f"3:{marker}")
    out = tmp_path / "run"
    assert finetune.run(_cfg(manifest, out, epochs=3), workers=2, max_failures=2) == 0
    assert marker.exists()  # rank 1 really died once
    assert _metrics(out)["epoch"] == 3
