"""Checkpoint I/O: our folders, object storage, bad input named clearly."""
import io
import json
import tarfile

import pytest
import torch

import model
from model.config import ConfigError, ModelConfig, preset
from tests.model.helpers import tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tok"), seed=1)


def _same_outputs(a, b):
    x = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        ea, la = a.encode(x, lengths)
        eb, lb = b.encode(x, lengths)
    assert torch.equal(la, lb) and torch.equal(ea, eb)


def test_save_load_roundtrip(tiny, tmp_path):
    model.save(tiny, tmp_path / "m")
    assert {"config.json", "model.safetensors", "parakeet_ray.json", "tokenizer.model", "preprocessor_config.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    loaded = model.load(tmp_path / "m")
    assert loaded.config == tiny.config and loaded.tokenizer.pieces == tiny.tokenizer.pieces
    _same_outputs(tiny, loaded)


def test_load_from_s3(tiny, tmp_path, s3_bucket):
    model.save(tiny, f"s3://{s3_bucket}/models/tiny")
    loaded = model.load(f"s3://{s3_bucket}/models/tiny")
    _same_outputs(tiny, loaded)


def test_checkpoint_bytes_tells_the_size_without_loading(tiny, tmp_path, s3_bucket, monkeypatch):
    from model.checkpoint import checkpoint_bytes

    model.save(tiny, tmp_path / "m")
    folder = sum(p.stat().st_size for p in (tmp_path / "m").iterdir())
    weights = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert checkpoint_bytes(tmp_path / "m") == folder > weights
    assert checkpoint_bytes(f"file://{tmp_path / 'm'}") == folder
    assert checkpoint_bytes(tmp_path / "m" / "model.safetensors") == weights
    model.save(tiny, f"s3://{s3_bucket}/models/sized")
    assert checkpoint_bytes(f"s3://{s3_bucket}/models/sized") == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing reachable: no size, no error
    for unknown in (tmp_path / "missing", f"s3://{s3_bucket}/models/missing", "someone/no-such-model"):
        assert checkpoint_bytes(unknown) is None


def test_load_dtype(tiny, tmp_path):
    model.save(tiny, tmp_path / "m")
    m16 = model.load(tmp_path / "m", dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16
    out = m16.transcribe([torch.randn(8000).numpy() * 0.1])  # features stay fp32, the rest runs in bf16
    assert isinstance(out[0], model.Transcript)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(model.CheckpointError, match="nope.nemo: no such file"):
        model.load(tmp_path / "nope.nemo")
    with pytest.raises(model.CheckpointError, match="no-such-bucket"):
        model.load("s3://no-such-bucket-parakeet/model")


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.nemo"
    bad.write_bytes(b"definitely not a tar archive" * 100)
    with pytest.raises(model.CheckpointError, match="bad.nemo"):
        model.load(bad)


def test_archive_with_unsafe_member_is_refused(tmp_path):
    evil = tmp_path / "evil.nemo"
    with tarfile.open(evil, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(model.CheckpointError, match="unsafe archive member"):
        model.load(evil)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_truncated_weights(tiny, tmp_path):
    model.save(tiny, tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(model.CheckpointError, match="model.safetensors"):
        model.load(tmp_path / "m")


def test_config_unknown_keys_are_named(tiny, tmp_path):
    model.save(tiny, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "parakeet_ray.json").read_text())
    cfg["encoder"]["n_layerz"] = 3
    (tmp_path / "m" / "parakeet_ray.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="n_layerz"):
        model.load(tmp_path / "m")
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})


def test_presets():
    v2, v3 = preset("parakeet-tdt-0.6b-v2"), preset("parakeet-tdt-0.6b-v3")
    assert (v2.vocab_size, v3.vocab_size) == (1024, 8192)
    assert v2.encoder.d_model == 1024 and v2.encoder.n_layers == 24 and v2.seconds_per_frame == 0.08
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("parakeet-huge")


def test_invalid_config_values():
    with pytest.raises(ConfigError, match="durations"):
        ModelConfig(durations=(0, 1, 1))
    with pytest.raises(ConfigError, match="d_model"):
        preset("tiny").encoder.__class__(d_model=65, n_heads=4)


def test_ff_expansion_factor_is_kept_for_hf_configs():
    """transformers' NeMo converter ignores ff_expansion_factor; our HF config carries it as intermediate_size."""
    cfg = preset("tiny")
    hf = cfg.to_hf()
    assert hf["encoder_config"]["intermediate_size"] == cfg.encoder.d_model * cfg.encoder.ff_expansion_factor
    from model.config_convert import config_from_hf

    assert config_from_hf(hf).encoder.ff_expansion_factor == cfg.encoder.ff_expansion_factor


def _cached_hub_repo(cache, repo_id, revision="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache keeps for a downloaded repo (refs/main -> snapshots/<rev>/)."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    return snapshot


def test_hub_ids_resolve_through_the_hub_cache(tiny, tmp_path, monkeypatch):
    """`model.load("org/name")` goes through huggingface_hub.snapshot_download: offline here, from a cache
    holding a transformers-layout repo and a NeMo repo (one .nemo file, as nvidia/parakeet-tdt-* are)."""
    import shutil
    from pathlib import Path

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    model.save(tiny, _cached_hub_repo(cache, "acme/tiny-tdt-hf"))
    nemo = Path(__file__).resolve().parents[1] / "data" / "nemo" / "tiny_tdt.nemo"
    shutil.copy(nemo, _cached_hub_repo(cache, "acme/tiny-tdt-nemo") / "tiny_tdt.nemo")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "acme/..." must not exist as a local path
    _same_outputs(tiny, model.load("acme/tiny-tdt-hf"))
    _same_outputs(model.load(nemo), model.load("acme/tiny-tdt-nemo"))
    with pytest.raises(model.CheckpointError, match="acme/not-cached: not a local path, and the hub download failed"):
        model.load("acme/not-cached")
