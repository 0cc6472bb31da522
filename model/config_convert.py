"""Translate NeMo and transformers configuration dicts to and from `ModelConfig`."""
from __future__ import annotations

from typing import Any

from .config import ConfigError, EncoderConfig, FeatureConfig, JointConfig, ModelConfig, PredictorConfig


def _get(d: dict, path: str, default: Any = KeyError) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is KeyError:
                raise ConfigError(f"NeMo config is missing {path!r}")
            return default
        cur = cur[part]
    return cur


def _target_name(section: dict) -> str:
    return str(section.get("_target_", "")).rsplit(".", 1)[-1]


def config_from_nemo(cfg: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a NeMo EncDecRNNTBPEModel `model_config.yaml` with a TDT loss."""
    enc, pre = _get(cfg, "encoder"), _get(cfg, "preprocessor")
    dec, joint = _get(cfg, "decoder"), _get(cfg, "joint")
    durations = _get(cfg, "model_defaults.tdt_durations", None) or _get(cfg, "loss.tdt_kwargs.durations", None)
    if not durations or _get(cfg, "loss.loss_name", "tdt") != "tdt":
        raise ConfigError("not a TDT model: model_defaults.tdt_durations / loss.loss_name 'tdt' missing")
    if _target_name(enc) not in ("", "ConformerEncoder"):
        raise ConfigError(f"encoder {_target_name(enc)!r} is not supported (ConformerEncoder only)")
    if enc.get("subsampling", "dw_striding") != "dw_striding":
        raise ConfigError(f"encoder.subsampling={enc.get('subsampling')!r}: only 'dw_striding' is supported")
    attn = enc.get("self_attention_model", "rel_pos")
    if attn not in ("rel_pos", "rel_pos_local_attn"):
        raise ConfigError(f"encoder.self_attention_model={attn!r} is not supported")
    if enc.get("conv_norm_type", "batch_norm") != "batch_norm":
        raise ConfigError(f"encoder.conv_norm_type={enc.get('conv_norm_type')!r}: only batch_norm is supported")
    if enc.get("causal_downsampling", False):
        raise ConfigError("encoder.causal_downsampling=true is not supported")
    if not enc.get("untie_biases", True):
        raise ConfigError("encoder.untie_biases=false is not supported")
    context = tuple(enc.get("att_context_size") or (-1, -1))
    if isinstance(context[0], (list, tuple)):  # multi-lookahead models list several; NeMo uses the first
        context = tuple(context[0])
    if attn == "rel_pos":
        context = (-1, -1)
    window_size, window_stride = float(pre.get("window_size", 0.025)), float(pre.get("window_stride", 0.01))
    sr = int(pre.get("sample_rate", 16000))
    if pre.get("normalize", "per_feature") not in ("per_feature",):
        raise ConfigError(f"preprocessor.normalize={pre.get('normalize')!r}: only per_feature is supported")
    if str(pre.get("window", "hann")) != "hann" or int(pre.get("frame_splicing", 1)) != 1:
        raise ConfigError("preprocessor: only a hann window without frame splicing is supported")
    if int(pre.get("pad_to", 0)) not in (0,) or not pre.get("log", True):
        raise ConfigError("preprocessor: pad_to must be 0 and log true")
    use_bias = bool(enc.get("use_bias", True))
    vocab = int(joint.get("num_classes", dec.get("vocab_size", 0)))
    if int(joint.get("num_extra_outputs", len(durations))) != len(durations):
        raise ConfigError("joint.num_extra_outputs does not match the number of TDT durations")
    prednet = dec.get("prednet", {})
    jointnet = joint.get("jointnet", {})
    return ModelConfig(
        vocab_size=vocab,
        durations=tuple(durations),
        max_symbols_per_step=int(_get(cfg, "decoding.greedy.max_symbols", 10) or 10),
        features=FeatureConfig(
            sample_rate=sr,
            n_fft=int(pre.get("n_fft") or 2 ** (int(window_size * sr) - 1).bit_length()),
            win_length=round(window_size * sr),
            hop_length=round(window_stride * sr),
            n_mels=int(pre.get("features", 64)),
            preemphasis=float(pre.get("preemph", 0.97) or 0.0),
            normalize="per_feature",
            dither=float(pre.get("dither", 1e-5)),
        ),
        encoder=EncoderConfig(
            n_layers=int(enc["n_layers"]),
            d_model=int(enc["d_model"]),
            n_heads=int(enc.get("n_heads", 4)),
            ff_expansion_factor=int(enc.get("ff_expansion_factor", 4)),
            conv_kernel_size=int(enc.get("conv_kernel_size", 31)),
            subsampling_factor=int(enc.get("subsampling_factor", 8)),
            subsampling_conv_channels=int(enc.get("subsampling_conv_channels", -1) if enc.get("subsampling_conv_channels", -1) != -1 else enc["d_model"]),
            xscaling=bool(enc.get("xscaling", True)),
            attention_bias=use_bias,
            convolution_bias=use_bias,
            att_context_size=context,
            pos_emb_max_len=int(enc.get("pos_emb_max_len", 5000)),
            dropout=float(enc.get("dropout", 0.1)),
            dropout_pre_encoder=float(enc.get("dropout_pre_encoder", 0.1)),
            dropout_att=float(enc.get("dropout_att", 0.1)),
        ),
        predictor=PredictorConfig(
            pred_hidden=int(prednet.get("pred_hidden", 640)),
            pred_rnn_layers=int(prednet.get("pred_rnn_layers", 2)),
            dropout=float(prednet.get("dropout", 0.2)),
        ),
        joint=JointConfig(
            joint_hidden=int(jointnet.get("joint_hidden", 640)),
            activation=str(jointnet.get("activation", "relu")),
            dropout=float(jointnet.get("dropout", 0.2)),
        ),
    )


def config_from_hf(d: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> ModelConfig:
    """ModelConfig from a transformers ParakeetTDTConfig dict (+ optional preprocessor_config.json)."""
    if d.get("model_type") not in (None, "parakeet_tdt"):
        raise ConfigError(f"config.json model_type={d.get('model_type')!r}: only 'parakeet_tdt' is supported")
    enc = d.get("encoder_config") or {}
    hidden = int(d.get("decoder_hidden_size", 640))
    n_mels = int(enc.get("num_mel_bins", 80))
    pre = preprocessor or {}
    vocab_with_blank = int(d.get("vocab_size", 8193))
    blank = int(d.get("blank_token_id", vocab_with_blank - 1))
    if blank != vocab_with_blank - 1:
        raise ConfigError(f"blank_token_id={blank} must be the last id (vocab_size - 1 = {vocab_with_blank - 1})")
    d_model = int(enc.get("hidden_size", 1024))
    inter = int(enc.get("intermediate_size", 4 * d_model))
    if inter % d_model:
        raise ConfigError(f"encoder_config.intermediate_size={inter} is not a multiple of hidden_size={d_model}")
    if int(enc.get("subsampling_conv_kernel_size", 3)) != 3 or int(enc.get("subsampling_conv_stride", 2)) != 2:
        raise ConfigError("encoder_config: only 3x3 stride-2 subsampling convs are supported")
    if enc.get("hidden_act", "silu") != "silu" or d.get("hidden_act", "relu") != "relu":
        raise ConfigError("only silu encoder activations and a relu joint are supported")
    return ModelConfig(
        vocab_size=vocab_with_blank - 1,
        durations=tuple(d.get("durations", (0, 1, 2, 3, 4))),
        max_symbols_per_step=int(d.get("max_symbols_per_step", 10)),
        features=FeatureConfig(
            sample_rate=int(pre.get("sampling_rate", 16000)),
            n_fft=int(pre.get("n_fft", 512)),
            win_length=int(pre.get("win_length", 400)),
            hop_length=int(pre.get("hop_length", 160)),
            n_mels=int(pre.get("feature_size", n_mels)),
            preemphasis=float(pre.get("preemphasis", 0.97) or 0.0),
        ),
        encoder=EncoderConfig(
            n_layers=int(enc.get("num_hidden_layers", 24)),
            d_model=d_model,
            n_heads=int(enc.get("num_attention_heads", 8)),
            ff_expansion_factor=inter // d_model,
            conv_kernel_size=int(enc.get("conv_kernel_size", 9)),
            subsampling_factor=int(enc.get("subsampling_factor", 8)),
            subsampling_conv_channels=int(enc.get("subsampling_conv_channels", 256)),
            xscaling=bool(enc.get("scale_input", True)),
            attention_bias=bool(enc.get("attention_bias", True)),
            convolution_bias=bool(enc.get("convolution_bias", True)),
            pos_emb_max_len=int(enc.get("max_position_embeddings", 5000)),
            dropout=float(enc.get("dropout", 0.1)),
            dropout_att=float(enc.get("attention_dropout", 0.1)),
        ),
        predictor=PredictorConfig(pred_hidden=hidden, pred_rnn_layers=int(d.get("num_decoder_layers", 2))),
        joint=JointConfig(joint_hidden=hidden),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The transformers ParakeetTDTConfig dict for `cfg` (raises if transformers cannot express it)."""
    if cfg.joint.joint_hidden != cfg.predictor.pred_hidden:
        raise ConfigError("transformers' ParakeetForTDT needs joint_hidden == pred_hidden")
    e = cfg.encoder
    return {
        "model_type": "parakeet_tdt",
        "architectures": ["ParakeetForTDT"],
        "vocab_size": cfg.vocab_size + 1,
        "blank_token_id": cfg.blank_id,
        "pad_token_id": cfg.blank_id,
        "decoder_start_token_id": cfg.blank_id,  # generate() starts the prediction network from blank
        "decoder_hidden_size": cfg.predictor.pred_hidden,
        "num_decoder_layers": cfg.predictor.pred_rnn_layers,
        "hidden_act": "relu",
        "max_symbols_per_step": cfg.max_symbols_per_step,
        "durations": list(cfg.durations),
        "encoder_config": {
            "model_type": "parakeet_encoder",
            "hidden_size": e.d_model,
            "num_hidden_layers": e.n_layers,
            "num_attention_heads": e.n_heads,
            "intermediate_size": e.d_model * e.ff_expansion_factor,
            "hidden_act": "silu",
            "attention_bias": e.attention_bias,
            "convolution_bias": e.convolution_bias,
            "conv_kernel_size": e.conv_kernel_size,
            "subsampling_factor": e.subsampling_factor,
            "subsampling_conv_channels": e.subsampling_conv_channels,
            "num_mel_bins": cfg.features.n_mels,
            "subsampling_conv_kernel_size": 3,
            "subsampling_conv_stride": 2,
            "max_position_embeddings": e.pos_emb_max_len,
            "scale_input": e.xscaling,
            "dropout": e.dropout,
            "attention_dropout": e.dropout_att,
        },
    }


def preprocessor_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    f = cfg.features
    return {
        "feature_extractor_type": "ParakeetFeatureExtractor",
        "feature_size": f.n_mels,
        "sampling_rate": f.sample_rate,
        "hop_length": f.hop_length,
        "n_fft": f.n_fft,
        "win_length": f.win_length,
        "preemphasis": f.preemphasis,
        "padding_value": 0.0,
        "return_attention_mask": True,
    }
