"""Confidence scores against NeMo 3.0 (fixtures: tests/data/make_nemo_fixtures.py confidence_cases(),
NeMo's transcribe(return_hypotheses=True) with confidence_cfg, strategy greedy_batch, batch size 1):
every frame measure, every aggregation, TDT duration confidence on and off, blanks in and out."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model.confidence import ConfidenceConfig, frame_confidence

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = json.loads((DATA / "nemo" / "confidence.json").read_text())
MODELS = ["tiny_tdt", "tiny_tdt_ms2"]


def config_of(case: dict) -> ConfidenceConfig:
    method = case["method_cfg"]
    return ConfidenceConfig(name=method["name"], entropy_type=method.get("entropy_type", "tsallis"),
                            alpha=method["alpha"], entropy_norm=method.get("entropy_norm", "exp"),
                            exclude_blank=case["exclude_blank"], aggregation=case["aggregation"],
                            tdt_include_duration=case["tdt_include_duration"])


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    name = request.param
    paths = [DATA / "audio" / c for c in json.loads((DATA / "nemo" / f"{name}.json").read_text())["clips"]]
    return name, model.load(DATA / "nemo" / f"{name}.nemo"), paths


@pytest.mark.parametrize("batch_size", [1, 8])
def test_token_and_word_confidence_equal_nemo(loaded, batch_size):
    name, m, paths = loaded
    worst = 0.0
    for key, case in FIXTURE["cases"].items():
        ours = m.transcribe(paths, batch_size=batch_size, confidence=config_of(case))
        for o, r in zip(ours, FIXTURE[name][key]):
            assert [t.id for t in o.tokens] == r["y_sequence"], key
            assert len(o.words) == len(r["word_confidence"]), key
            tok = np.array([t.confidence for t in o.tokens]), np.array(r["token_confidence"])
            word = np.array([w.confidence for w in o.words]), np.array(r["word_confidence"])
            for a, b in (tok, word):
                if len(b):
                    worst = max(worst, float(np.abs(a - b).max()))
                    assert np.abs(a - b).max() < 1e-5, (key, a, b)
            assert np.array_equal(np.array(o.token_confidence), tok[0])
    print(f"{name} batch {batch_size}: {len(FIXTURE['cases'])} cases, max |ours - NeMo| = {worst:.2e}")


def test_the_fixture_exercises_blanks_and_durations():
    """Blanks and durations must change some scores, or the cases above could not tell the rules apart."""
    for name in MODELS:
        runs = FIXTURE[name]
        for base, other in (("tsallis_exp_a0.33|mean|excl1|dur1", "tsallis_exp_a0.33|mean|excl0|dur1"),
                            ("tsallis_exp_a0.33|prod|excl1|dur1", "tsallis_exp_a0.33|prod|excl0|dur1"),
                            ("max_prob_a1|min|excl1|dur0", "max_prob_a1|min|excl1|dur1"),
                            ("gibbs_lin_a1.0|min|excl0|dur0", "gibbs_lin_a1.0|min|excl0|dur1")):
            differ = sum(a["token_confidence"] != b["token_confidence"] for a, b in zip(runs[base], runs[other]))
            assert differ >= 4, (name, base, other)


def test_utterance_confidence_is_the_aggregation_of_word_confidences(loaded):
    _, m, paths = loaded
    for how in ("min", "mean"):
        for t in m.transcribe(paths, confidence=ConfidenceConfig(aggregation=how)):
            words = [w.confidence for w in t.words]
            expected = min(words) if how == "min" else sum(words) / len(words)
            assert t.confidence == pytest.approx(expected)


def test_confidence_off_and_without_timestamps(loaded):
    _, m, paths = loaded
    off = m.transcribe(paths[:2], confidence=None)
    assert all(t.confidence is None and all(x.confidence is None for x in t.tokens + t.words) for t in off)
    bare = m.transcribe(paths[:2], timestamps=False)
    full = m.transcribe(paths[:2])
    assert [b.token_confidence for b in bare] == [tuple(x.confidence for x in f.tokens) for f in full]
    assert [b.confidence for b in bare] == pytest.approx([f.confidence for f in full])


def test_measures_bounds_and_extremes():
    """One-hot distributions score 1, uniform ones 0, for every measure (NeMo's normalisation)."""
    v = 10
    one_hot = torch.full((v,), -1e4).index_fill_(0, torch.tensor([3]), 0.0).log_softmax(-1)
    uniform = torch.full((v,), -math.log(v))
    for name, kind, alpha, norm in [("max_prob", "tsallis", 1.0, "exp"), ("max_prob", "tsallis", 0.5, "exp")] + [
        ("entropy", k, a, n) for k in ("gibbs", "tsallis", "renyi") for a in (0.33, 1.0) for n in ("lin", "exp")
    ]:
        cfg = ConfidenceConfig(name=name, entropy_type=kind, alpha=alpha, entropy_norm=norm)
        assert float(frame_confidence(one_hot, cfg, v)) == pytest.approx(1.0, abs=1e-4), cfg
        assert float(frame_confidence(uniform, cfg, v)) == pytest.approx(0.0, abs=1e-4), cfg


@pytest.mark.parametrize("bad", [dict(name="variance"), dict(entropy_type="shannon"), dict(alpha=0.0),
                                 dict(entropy_norm="log"), dict(aggregation="median")])
def test_bad_settings_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ConfidenceConfig(**bad)


def test_noise_lowers_confidence():
    """Clean clips score higher than the same clips under heavy noise (mean over the fixture clips)."""
    m = model.load(DATA / "nemo" / "tiny_tdt.nemo")
    from model.audio import decode_audio

    clips = [decode_audio(str(p), 16000)[0] for p in sorted((DATA / "audio").glob("*.wav"))]
    rng = np.random.default_rng(0)
    noisy = [(c + rng.normal(0, 3 * c.std(), len(c))).astype(np.float32) for c in clips]
    clean_conf = [t.confidence for t in m.transcribe(clips)]
    noisy_conf = [t.confidence if t.confidence is not None else 0.0 for t in m.transcribe(noisy)]
    assert np.mean(clean_conf) > np.mean(noisy_conf) + 0.05, (clean_conf, noisy_conf)
