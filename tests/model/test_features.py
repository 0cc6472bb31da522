"""NeMo 3.0 AudioToMelSpectrogramPreprocessor options, feature by feature (fixtures made by
tests/data/make_nemo_fixtures.py: FEATURE_CASES, three clips of different lengths in one batch)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ConfigError, FeatureConfig
from model.config_convert import _features_from_nemo
from model.features import LogMelFeatures, power_spectrum

DATA = Path(__file__).resolve().parents[1] / "data" / "nemo"
CASES = json.loads((DATA / "features_cases.json").read_text())


@pytest.fixture(scope="module")
def fixture():
    return np.load(DATA / "features.npz")


@pytest.mark.parametrize("name", sorted(CASES))
def test_features_equal_nemo(fixture, name):
    opts = CASES[name]
    cfg = _features_from_nemo(opts)  # missing keys take AudioToMelSpectrogramPreprocessor's defaults
    rate = cfg.sample_rate
    audio, lengths = torch.from_numpy(fixture[f"audio_{rate}"]), torch.from_numpy(fixture[f"lengths_{rate}"])
    ref, ref_len = fixture[f"{name}_features"], fixture[f"{name}_lengths"]
    with torch.no_grad():
        feats, flen = LogMelFeatures(cfg).eval()(audio, lengths)
    assert flen.tolist() == ref_len.tolist()
    assert tuple(feats.shape) == ref.shape  # pad_to included
    ours = feats.numpy()
    # values past a row's length are pad_value in both; log-free features are large, so compare relatively
    scale = max(1.0, float(np.abs(ref).max())) if not cfg.log else 1.0
    # float32 rounding differs by CPU (the FFT's and the mel matmul's kernels: AVX512 against AMX machines), and
    # per-feature normalisation divides it by each mel bin's std, which for a quiet bin is small: on an AMX machine
    # one element of bin 30 is off by 3.2e-4 while 99.9 % of them are within 4e-5. The closest two cases' fixtures
    # (two different options) differ by 0.28 at most and 0.19 at the 99.9th percentile.
    err = np.abs(ours - ref) / scale
    assert err.max() < 1e-3 and np.percentile(err, 99.9) < 1e-4, (name, err.max(), np.percentile(err, 99.9))


def test_nemo_defaults_are_not_parakeets():
    """A preprocessor section without keys means NeMo's class defaults (20 ms window, 64 mels, pad_to 16)."""
    cfg = _features_from_nemo({})
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.n_mels, cfg.pad_to) == (320, 160, 512, 64, 16)
    assert (cfg.window, cfg.normalize, cfg.mag_power, cfg.log, cfg.mel_norm) == ("hann", "per_feature", 2.0, True, "slaney")


@pytest.mark.parametrize("opts, key", [
    ({"window": "none"}, "window"),
    ({"normalize": {"fixed_mean": [0.0], "fixed_std": [1.0]}}, "normalize"),
    ({"pad_to": "max"}, "pad_to"),
    ({"window_size": 0.025, "n_window_size": 400}, "n_window_size"),
    ({"log_zero_guard_type": "max"}, "log_zero_guard_type"),
    ({"mel_norm": "htk"}, "mel_norm"),
    ({"exact_pad": True, "n_window_stride": 161, "window_stride": None}, "exact_pad"),
    ({"featurez": 80}, "featurez"),
    ({"_target_": "nemo.collections.asr.modules.AudioToMFCCPreprocessor"}, "AudioToMFCCPreprocessor"),
])
def test_unsupported_preprocessor_options_are_named(opts, key):
    with pytest.raises(ConfigError, match=key):
        _features_from_nemo(opts)


def test_train_only_options_do_not_change_inference():
    a = _features_from_nemo({"dither": 0.0, "nb_augmentation_prob": 0.0})
    b = _features_from_nemo({"dither": 1e-3, "nb_augmentation_prob": 0.5, "nb_max_freq": 4000})
    x, n = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        assert torch.equal(LogMelFeatures(a).eval()(x, n)[0], LogMelFeatures(b).eval()(x, n)[0])


def test_frame_splicing_widens_the_encoder_input():
    assert FeatureConfig(n_mels=64, frame_splicing=3).feature_dim == 192


def test_power_spectrum_is_the_reduction_bit_for_bit():
    x = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0)) * 0.3
    spec = torch.stft(x, 512, hop_length=160, win_length=400, window=torch.hann_window(400), return_complex=True)
    assert torch.equal(power_spectrum(spec), torch.view_as_real(spec).pow(2).sum(-1))
    assert torch.equal(power_spectrum(spec, 1.0), torch.view_as_real(spec).pow(2).sum(-1).pow(0.5))
