"""Pipeline fixtures: a real tiny model saved with model.save (random weights), and a Ray Data
context that fails fast instead of hanging."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import model
from tests.model.helpers import tiny_model

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
CLIPS = sorted(p.name for p in AUDIO.iterdir() if p.suffix in (".wav", ".flac"))
NO_PROGRESS_TIMEOUT_S = 90.0  # a stuck pipeline fails the test instead of hanging CI


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A tiny ParakeetTDT saved with model.save; the pipeline loads it back by path."""
    root = tmp_path_factory.mktemp("tiny-model")
    m = tiny_model(root / "tokenizer")
    model.save(m, root / "model")
    return str(root / "model")


@pytest.fixture(scope="session")
def loaded_model(model_dir):
    return model.load(model_dir)


@pytest.fixture()
def audio_dir(tmp_path) -> Path:
    """A copy of the spoken test clips (tests/data/audio) in a fresh folder."""
    out = tmp_path / "audio"
    out.mkdir()
    for name in CLIPS:
        shutil.copy(AUDIO / name, out / name)
    return out


@pytest.fixture()
def ray_data(ray_cluster):
    """The shared local Ray cluster with a short no-progress guard."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.execution_no_progress_timeout_s
    ctx.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    yield ray_cluster
    ctx.execution_no_progress_timeout_s = saved
