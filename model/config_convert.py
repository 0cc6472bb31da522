"""Translate NeMo and transformers configuration dicts to and from `ModelConfig`."""
from __future__ import annotations

import math
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


# NeMo model classes whose TDT head we load. A hybrid TDT-CTC model's CTC head (aux_ctc, ctc_decoder.*
# weights) is not loaded: transcription decodes with the TDT head, as NeMo's transcribe() does by default.
NEMO_MODEL_CLASSES = ("EncDecRNNTBPEModel", "EncDecHybridRNNTCTCBPEModel")
# Keys of AudioToMelSpectrogramPreprocessor that do not change inference output.
_PREPROCESSOR_IGNORED = {"_target_", "dither", "nb_augmentation_prob", "nb_max_freq", "rng", "use_grads",
                         "stft_conv", "stft_exact_pad", "max_duration", "_name_"}


def config_from_nemo(cfg: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a NeMo EncDecRNNTBPEModel / EncDecHybridRNNTCTCBPEModel `model_config.yaml` with a TDT loss.

    Every option that changes inference output is read or refused with a ConfigError naming the key.
    """
    enc, pre = _get(cfg, "encoder"), _get(cfg, "preprocessor")
    dec, joint = _get(cfg, "decoder"), _get(cfg, "joint")
    target = str(cfg.get("target") or cfg.get("_target_") or "").rsplit(".", 1)[-1]  # model_config.yaml: `target`
    if target and target not in NEMO_MODEL_CLASSES:
        raise ConfigError(f"target={target!r}: supported NeMo model classes are {NEMO_MODEL_CLASSES}")
    durations = _get(cfg, "model_defaults.tdt_durations", None) or _get(cfg, "loss.tdt_kwargs.durations", None)
    if not durations or _get(cfg, "loss.loss_name", "tdt") != "tdt":
        raise ConfigError("not a TDT model: model_defaults.tdt_durations / loss.loss_name 'tdt' missing")
    vocab = int(joint.get("num_classes", dec.get("vocab_size", 0)))
    if int(joint.get("num_extra_outputs", len(durations))) != len(durations):
        raise ConfigError("joint.num_extra_outputs does not match the number of TDT durations")
    features = _features_from_nemo(pre)
    encoder = _encoder_from_nemo(enc, features)
    return ModelConfig(
        vocab_size=vocab,
        durations=tuple(durations),
        # as RNNTDecoding: greedy.max_symbols, else greedy.max_symbols_per_step (its structured default, 10)
        max_symbols_per_step=int(_get(cfg, "decoding.greedy.max_symbols", None)
                                 or _get(cfg, "decoding.greedy.max_symbols_per_step", None) or 10),
        decoding=_strategy_from_nemo(_get(cfg, "decoding.strategy", "greedy_batch")),
        features=features,
        encoder=encoder,
        predictor=_predictor_from_nemo(dec),
        joint=_joint_from_nemo(joint),
    )


def _strategy_from_nemo(strategy: Any) -> str:
    """`greedy` keeps GreedyTDTInfer's rules; `greedy_batch` and the beam strategies (which we do not
    implement: we decode greedily) get label looping, what NeMo's greedy_batch runs."""
    return "greedy" if str(strategy) == "greedy" else "greedy_batch"


def _features_from_nemo(pre: dict[str, Any]) -> FeatureConfig:
    """FeatureConfig from a NeMo preprocessor section; missing keys take AudioToMelSpectrogramPreprocessor's
    own defaults (window_size 0.02, 64 features, pad_to 16, ...), which are not Parakeet's."""
    target = _target_name(pre)
    if target and target != "AudioToMelSpectrogramPreprocessor":
        raise ConfigError(f"preprocessor._target_={target!r}: only AudioToMelSpectrogramPreprocessor is supported")
    known = _PREPROCESSOR_IGNORED | {
        "sample_rate", "window_size", "window_stride", "n_window_size", "n_window_stride", "window", "normalize",
        "n_fft", "preemph", "features", "lowfreq", "highfreq", "log", "log_zero_guard_type", "log_zero_guard_value",
        "pad_to", "frame_splicing", "exact_pad", "pad_value", "mag_power", "mel_norm"}
    unknown = sorted(set(pre) - known)
    if unknown:
        raise ConfigError(f"preprocessor: unknown key(s) {unknown}")
    sr = int(pre.get("sample_rate", 16000))
    # as AudioToMelSpectrogramPreprocessor: n_window_* in samples, else window_* seconds truncated to samples
    window_size, window_stride = pre.get("window_size", 0.02), pre.get("window_stride", 0.01)
    if pre.get("n_window_size") and window_size:
        raise ConfigError("preprocessor: both window_size and n_window_size are set (NeMo refuses this too)")
    if pre.get("n_window_stride") and window_stride:
        raise ConfigError("preprocessor: both window_stride and n_window_stride are set (NeMo refuses this too)")
    win = int(pre["n_window_size"]) if pre.get("n_window_size") else int(float(window_size) * sr)
    hop = int(pre["n_window_stride"]) if pre.get("n_window_stride") else int(float(window_stride) * sr)
    window = pre.get("window", "hann")
    if window in (None, "none"):
        raise ConfigError("preprocessor.window='none': NeMo 3.0's FilterbankFeatures cannot run without a window "
                          "(it calls .to() on None); use hann, hamming, blackman or bartlett")
    normalize = pre.get("normalize", "per_feature")
    if isinstance(normalize, dict):
        raise ConfigError("preprocessor.normalize with fixed_mean/fixed_std is not supported")
    # NeMo normalises only for 'per_feature' and 'all_features'; any other value ('NA', null) means none
    normalize = normalize if normalize in ("per_feature", "all_features") else "none"
    pad_to = pre.get("pad_to", 16)
    if pad_to == "max":
        raise ConfigError("preprocessor.pad_to='max' (pad every batch to max_duration) is not supported")
    guard = pre.get("log_zero_guard_value", 2**-24)
    preemph = pre.get("preemph", 0.97)
    highfreq = pre.get("highfreq")
    return FeatureConfig(
        sample_rate=sr,
        n_fft=int(pre.get("n_fft") or 2 ** math.ceil(math.log2(win))),
        win_length=win,
        hop_length=hop,
        n_mels=int(pre.get("features", 64)),
        window=str(window),
        preemphasis=float(preemph) if preemph is not None else 0.0,
        lowfreq=float(pre.get("lowfreq", 0) or 0),
        highfreq=float(highfreq) if highfreq else None,  # NeMo: highfreq or sample_rate / 2
        mel_norm=pre.get("mel_norm", "slaney"),
        mag_power=float(pre.get("mag_power", 2.0)),
        log=bool(pre.get("log", True)),
        log_zero_guard_type=str(pre.get("log_zero_guard_type", "add")),
        log_zero_guard=guard if isinstance(guard, str) else float(guard),
        frame_splicing=int(pre.get("frame_splicing", 1)),
        normalize=normalize,
        exact_pad=bool(pre.get("exact_pad", False)),
        pad_to=int(pad_to or 0),
        pad_value=float(pre.get("pad_value", 0.0)),
        dither=float(pre.get("dither", 1e-5)),
    )


def _encoder_from_nemo(enc: dict[str, Any], features: FeatureConfig) -> EncoderConfig:
    if _target_name(enc) not in ("", "ConformerEncoder"):
        raise ConfigError(f"encoder {_target_name(enc)!r} is not supported (ConformerEncoder only)")
    half = (int(enc.get("conv_kernel_size", 31)) - 1) // 2
    refuse = {  # key: (values that mean "off", what anything else would need)
        "causal_downsampling": ((False, None), "causal subsampling convolutions"),
        "reduction": ((None,), "intermediate time reduction"),
        "global_tokens": ((0, None), "Longformer global tokens"),
        "conv_context_size": ((None, [half, half]), "causal / asymmetric convolution context"),
        "att_chunk_context_size": ((None,), "chunked attention with right context"),
    }
    for key, (off, what) in refuse.items():
        value = enc.get(key, off[0])
        if not any(value == v for v in off):
            raise ConfigError(f"encoder.{key}={value!r} ({what}) is not supported")
    if int(enc.get("feat_out", -1)) not in (-1, int(enc["d_model"])):
        raise ConfigError(f"encoder.feat_out={enc.get('feat_out')} (an output projection) is not supported")
    if enc.get("conv_context_style", "regular") != "regular":
        raise ConfigError(f"encoder.conv_context_style={enc.get('conv_context_style')!r} is not supported")
    feat_in = int(enc.get("feat_in", features.feature_dim))
    if feat_in != features.feature_dim:
        raise ConfigError(f"encoder.feat_in={feat_in} does not match the preprocessor's {features.feature_dim} "
                          f"features (features x frame_splicing)")
    attn = enc.get("self_attention_model", "rel_pos")
    if attn not in ("rel_pos", "rel_pos_local_attn"):
        raise ConfigError(f"encoder.self_attention_model={attn!r} is not supported (rel_pos, rel_pos_local_attn)")
    norm = enc.get("conv_norm_type", "batch_norm")
    if norm not in ("batch_norm", "layer_norm"):
        raise ConfigError(f"encoder.conv_norm_type={norm!r}: only batch_norm and layer_norm are supported")
    subsampling = enc.get("subsampling", "striding")  # ConformerEncoder's own default
    if subsampling not in ("dw_striding", "striding"):
        raise ConfigError(f"encoder.subsampling={subsampling!r}: only 'dw_striding' and 'striding' are supported")
    # Multi-lookahead models list several contexts; NeMo's inference uses the first (training samples them).
    context = enc.get("att_context_size") or [-1, -1]
    if isinstance(context[0], (list, tuple)):
        context = context[0]
    context = tuple(int(c) for c in context)
    if enc.get("att_context_style", "regular") != "regular" and context != (-1, -1):
        raise ConfigError(f"encoder.att_context_style={enc.get('att_context_style')!r} with a limited context "
                          f"{list(context)} (chunked attention) is not supported")
    if attn == "rel_pos":
        context = (-1, -1)  # full attention: NeMo's rel_pos ignores the context for inference masks
    channels = int(enc.get("subsampling_conv_channels", -1))
    use_bias = bool(enc.get("use_bias", True))
    return EncoderConfig(
        n_layers=int(enc["n_layers"]),
        d_model=int(enc["d_model"]),
        n_heads=int(enc.get("n_heads", 4)),
        ff_expansion_factor=int(enc.get("ff_expansion_factor", 4)),
        conv_kernel_size=int(enc.get("conv_kernel_size", 31)),
        subsampling=subsampling,
        subsampling_factor=int(enc.get("subsampling_factor", 4)),
        subsampling_conv_channels=channels if channels != -1 else int(enc["d_model"]),
        conv_norm=norm,
        xscaling=bool(enc.get("xscaling", True)),
        # untie_biases=false shares one pos_bias_u/v across layers: the checkpoint still stores them per layer
        attention_bias=use_bias,
        convolution_bias=use_bias,
        att_context_size=context,
        pos_emb_max_len=int(enc.get("pos_emb_max_len", 5000)),
        dropout=float(enc.get("dropout", 0.1)),
        dropout_pre_encoder=float(enc.get("dropout_pre_encoder", 0.1)),
        dropout_att=float(enc.get("dropout_att", 0.0)),
    )


def _predictor_from_nemo(dec: dict[str, Any]) -> PredictorConfig:
    if _target_name(dec) not in ("", "RNNTDecoder"):
        raise ConfigError(f"decoder {_target_name(dec)!r} is not supported (RNNTDecoder only)")
    if dec.get("normalization_mode") is not None:
        raise ConfigError(f"decoder.normalization_mode={dec.get('normalization_mode')!r} (LSTM layer norm) is not supported")
    if not dec.get("blank_as_pad", True):
        raise ConfigError("decoder.blank_as_pad=false is not supported (every TDT model pads with blank)")
    prednet = dec.get("prednet", {})
    hidden = int(prednet.get("pred_hidden", 640))
    if int(prednet.get("rnn_hidden_size", -1)) not in (-1, hidden):
        raise ConfigError(f"decoder.prednet.rnn_hidden_size={prednet.get('rnn_hidden_size')} != pred_hidden is not supported")
    return PredictorConfig(
        pred_hidden=hidden,
        pred_rnn_layers=int(prednet.get("pred_rnn_layers", 1)),
        dropout=float(prednet.get("dropout", 0.0)),
    )


def _joint_from_nemo(joint: dict[str, Any]) -> JointConfig:
    if _target_name(joint) not in ("", "RNNTJoint"):
        raise ConfigError(f"joint {_target_name(joint)!r} is not supported (RNNTJoint only)")
    jointnet = joint.get("jointnet", {})
    return JointConfig(
        joint_hidden=int(jointnet.get("joint_hidden", 640)),
        activation=str(jointnet.get("activation", "relu")).lower(),
        dropout=float(jointnet.get("dropout", 0.0)),
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
    f, e = cfg.features, cfg.encoder
    plain = FeatureConfig()  # what ParakeetFeatureExtractor computes besides its size/rate/FFT settings
    for name in ("window", "lowfreq", "highfreq", "mel_norm", "mag_power", "log", "log_zero_guard_type",
                 "log_zero_guard", "frame_splicing", "normalize", "exact_pad", "pad_value"):
        if getattr(f, name) != getattr(plain, name):
            raise ConfigError(f"transformers' ParakeetFeatureExtractor cannot express features.{name}={getattr(f, name)!r}")
    if e.subsampling != "dw_striding" or e.conv_norm != "batch_norm" or cfg.joint.activation != "relu":
        raise ConfigError("transformers' ParakeetForTDT needs dw_striding subsampling, batch_norm and a relu joint")
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
