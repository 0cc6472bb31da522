"""Reading NeMo model_config.yaml: every option that changes inference output is read or refused with
a ConfigError naming the key (docs/checkpoints.md). Values are NeMo's own classes' defaults when absent."""
import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

import model
from model.config import ConfigError
from model.config_convert import config_from_nemo

DATA = Path(__file__).resolve().parents[1] / "data" / "nemo"


def base_config() -> dict:
    """A Parakeet-shaped NeMo config (the keys parakeet-tdt-0.6b-v2's model_config.yaml carries)."""
    return {
        "target": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": 16000,
                         "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01, "window": "hann",
                         "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-5, "pad_to": 0,
                         "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 128, "feat_out": -1,
                    "n_layers": 2, "d_model": 64, "use_bias": False, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "causal_downsampling": False, "reduction": None,
                    "reduction_position": None, "reduction_factor": 1, "ff_expansion_factor": 4,
                    "self_attention_model": "rel_pos", "n_heads": 4, "att_context_size": [-1, -1],
                    "att_context_style": "regular", "xscaling": False, "untie_biases": True, "pos_emb_max_len": 5000,
                    "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "conv_context_size": None},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True, "vocab_size": 64,
                    "prednet": {"pred_hidden": 64, "pred_rnn_layers": 2, "t_max": None, "dropout": 0.2}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": 64, "num_extra_outputs": 5,
                  "jointnet": {"joint_hidden": 64, "activation": "relu", "dropout": 0.2}},
        "model_defaults": {"tdt_durations": [0, 1, 2, 3, 4]},
        "loss": {"loss_name": "tdt"},
        "decoding": {"strategy": "greedy_batch", "model_type": "tdt", "greedy": {"max_symbols": 10}},
        "aux_ctc": {"ctc_loss_weight": 0.3},  # v2/v3 carry an unfilled one; the class decides, not the section
    }


def with_(cfg: dict, path: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, last = path.split(".")
    cur = cfg
    for p in parents:
        cur = cur[p]
    cur[last] = value
    return cfg


def test_parakeet_v2_shape_reads_as_its_preset():
    cfg = config_from_nemo(base_config())
    assert cfg.decoding == "greedy_batch" and cfg.max_symbols_per_step == 10
    assert (cfg.features.win_length, cfg.features.hop_length, cfg.features.n_fft, cfg.features.n_mels) == (400, 160, 512, 128)
    assert cfg.features.pad_to == 0 and not cfg.encoder.xscaling and not cfg.encoder.attention_bias
    assert cfg.encoder.subsampling == "dw_striding" and cfg.encoder.conv_norm == "batch_norm"


@pytest.mark.parametrize("path, value, field, expected", [
    ("decoding.strategy", "greedy", "decoding", "greedy"),  # parakeet-tdt-1.1b
    ("decoding.strategy", "beam", "decoding", "greedy_batch"),  # decoded greedily, label looping
    ("decoding.greedy.max_symbols", 3, "max_symbols_per_step", 3),
    ("encoder.att_context_size", [[-1, -1], [70, 13]], "encoder.att_context_size", (-1, -1)),  # multi-lookahead
    ("encoder.conv_norm_type", "layer_norm", "encoder.conv_norm", "layer_norm"),
    ("encoder.subsampling", "striding", "encoder.subsampling", "striding"),
    ("encoder.untie_biases", False, "encoder.n_layers", 2),
    ("encoder.global_tokens", 0, "encoder.n_layers", 2),
    ("encoder.conv_context_size", [4, 4], "encoder.conv_kernel_size", 9),
    ("joint.jointnet.activation", "tanh", "joint.activation", "tanh"),
    ("decoder.prednet.pred_rnn_layers", 1, "predictor.pred_rnn_layers", 1),
    ("target", "nemo.collections.asr.models.EncDecHybridRNNTCTCBPEModel", "vocab_size", 64),
])
def test_supported_options_are_read(path, value, field, expected):
    cfg = config_from_nemo(with_(base_config(), path, value))
    got = cfg
    for part in field.split("."):
        got = getattr(got, part)
    assert got == expected


def test_local_attention_takes_the_first_lookahead():
    cfg = base_config()
    cfg["encoder"].update(self_attention_model="rel_pos_local_attn", att_context_size=[[64, 64], [64, 0]])
    assert config_from_nemo(cfg).encoder.att_context_size == (64, 64)


@pytest.mark.parametrize("path, value, key", [
    ("target", "nemo.collections.asr.models.EncDecCTCModelBPE", "target"),
    ("encoder.causal_downsampling", True, "causal_downsampling"),
    ("encoder.reduction", "pooling", "reduction"),
    ("encoder.global_tokens", 4, "global_tokens"),
    ("encoder.conv_context_size", "causal", "conv_context_size"),
    ("encoder.feat_out", 256, "feat_out"),
    ("encoder.self_attention_model", "abs_pos", "self_attention_model"),
    ("encoder.conv_norm_type", "group_norm8", "conv_norm_type"),
    ("encoder.subsampling", "vggnet", "subsampling"),
    ("encoder.feat_in", 80, "feat_in"),
    ("encoder._target_", "nemo.collections.asr.modules.SqueezeformerEncoder", "SqueezeformerEncoder"),
    ("decoder.normalization_mode", "layer", "normalization_mode"),
    ("decoder.blank_as_pad", False, "blank_as_pad"),
    ("joint.jointnet.activation", "gelu", "activation"),
    ("joint.num_extra_outputs", 4, "num_extra_outputs"),
    ("loss.loss_name", "default", "TDT"),
    ("preprocessor.window", "none", "window"),
])
def test_unsupported_options_are_refused_by_name(path, value, key):
    with pytest.raises(ConfigError, match=key):
        config_from_nemo(with_(base_config(), path, value))


def test_chunked_attention_style_is_refused_with_a_limited_context():
    cfg = base_config()
    cfg["encoder"].update(self_attention_model="rel_pos_local_attn", att_context_size=[64, 8],
                          att_context_style="chunked_limited")
    with pytest.raises(ConfigError, match="att_context_style"):
        config_from_nemo(cfg)


def test_missing_keys_take_nemos_class_defaults():
    cfg = base_config()
    for key in ("window_size", "features", "pad_to", "n_fft"):
        del cfg["preprocessor"][key]
    cfg["encoder"]["feat_in"] = 64
    for key in ("subsampling", "subsampling_factor", "xscaling", "use_bias", "conv_kernel_size"):
        del cfg["encoder"][key]
    c = config_from_nemo(cfg)
    assert (c.features.win_length, c.features.n_mels, c.features.pad_to, c.features.n_fft) == (320, 64, 16, 512)
    assert (c.encoder.subsampling, c.encoder.subsampling_factor, c.encoder.xscaling) == ("striding", 4, True)
    assert c.encoder.attention_bias and c.encoder.conv_kernel_size == 31


def test_decoding_strategy_survives_our_folders(tmp_path):
    """Our folders store the strategy in parakeet_ray.json; folders written before it existed load as greedy_batch.
    A model transformers cannot express (striding subsampling) is saved with our config only."""
    m = model.load(DATA / "tiny_tdt_ms3.nemo")
    import dataclasses

    m.config = dataclasses.replace(m.config, decoding="greedy")
    model.save(m, tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()  # transformers cannot express striding subsampling
    back = model.load(tmp_path / "m")
    assert back.config == m.config
    x = torch.randn(2, 16000) * 0.1
    assert [t.token_ids for t in back.transcribe_waveforms(x, torch.tensor([16000, 12000]))] == \
        [t.token_ids for t in m.transcribe_waveforms(x, torch.tensor([16000, 12000]))]
    old = json.loads((tmp_path / "m" / "parakeet_ray.json").read_text())
    del old["decoding"]
    (tmp_path / "m" / "parakeet_ray.json").write_text(json.dumps(old))
    assert model.load(tmp_path / "m").config.decoding == "greedy_batch"


def test_hf_folders_decode_with_label_looping(tmp_path):
    m = model.load(DATA / "tiny_tdt.nemo")
    model.save(m, tmp_path / "m")
    (tmp_path / "m" / "parakeet_ray.json").unlink()  # a transformers folder: config.json only
    assert model.load(tmp_path / "m").config.decoding == "greedy_batch"


def test_the_fixture_archives_configs_read_as_nemo_wrote_them():
    import tarfile

    with tarfile.open(DATA / "tiny_tdt_ctc.nemo") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
        cfg = yaml.safe_load(tar.extractfile(member).read())
    assert "aux_ctc" in cfg and cfg["target"].endswith("EncDecHybridRNNTCTCBPEModel")
    assert config_from_nemo(cfg).features.n_mels == 80
