"""Architecture description of a Parakeet TDT model: frozen, validated dataclasses.

Build one from a preset (`preset("parakeet-tdt-0.6b-v2")`), from a NeMo `model_config.yaml`
(`ModelConfig.from_nemo`), from a transformers `ParakeetTDTConfig` `config.json`
(`ModelConfig.from_hf`) or from our own `to_dict()` output (`ModelConfig.from_dict`).
Override with `dataclasses.replace`; unknown keys are rejected.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A model configuration is invalid or unsupported; the message names the offending key."""


WINDOWS = ("hann", "hamming", "blackman", "bartlett")  # symmetric (periodic=False), as NeMo builds them
NORMALIZE = ("per_feature", "all_features", "none")
LOG_GUARD_NAMES = ("tiny", "eps")  # torch.finfo(float32) values, as NeMo's log_zero_guard_value strings


@dataclass(frozen=True)
class FeatureConfig:
    """NeMo's AudioToMelSpectrogramPreprocessor (FilterbankFeatures) settings that change inference output.

    Defaults are Parakeet's (which differ from NeMo's class defaults: see config_convert for those).
    """

    sample_rate: int = 16_000  # Hz
    n_fft: int = 512  # FFT size in samples (32 ms); NeMo derives 2 ** ceil(log2(win_length)) when unset
    win_length: int = 400  # 25 ms window (NeMo window_size * sample_rate, truncated)
    hop_length: int = 160  # 10 ms frame step
    n_mels: int = 128  # slaney-scale mel bins (NeMo `features`)
    window: str = "hann"  # one of WINDOWS
    preemphasis: float = 0.97  # y[n] = x[n] - 0.97 x[n-1]; 0 disables (NeMo preemph: null)
    lowfreq: float = 0.0  # Hz, lowest mel filter edge
    highfreq: float | None = None  # Hz, highest mel filter edge; None = sample_rate / 2
    mel_norm: str | None = "slaney"  # librosa's filter normalisation: "slaney" (area) or None
    mag_power: float = 2.0  # |X| ** mag_power before the filterbank (2 = power spectrum)
    log: bool = True  # log of the mel energies
    log_zero_guard_type: str = "add"  # "add": log(x + guard); "clamp": log(max(x, guard))
    log_zero_guard: float | str = 2.0**-24  # or "tiny" / "eps" (float32 finfo)
    frame_splicing: int = 1  # NeMo stacks this many copies of each frame along the feature axis
    normalize: str = "per_feature"  # per mel bin over valid frames (n-1 std); "all_features"; or "none"
    exact_pad: bool = False  # STFT without centring, padded by (n_fft - hop) / 2 each side
    pad_to: int = 0  # pad the frame axis of a batch to a multiple of this (NeMo default 16); 0 = off
    pad_value: float = 0.0  # value of frames past each row's length
    dither: float = 1e-5  # gaussian noise std added in training only

    def __post_init__(self):
        if self.normalize not in NORMALIZE:
            raise ConfigError(f"features.normalize={self.normalize!r}: expected one of {NORMALIZE}")
        if self.window not in WINDOWS:
            raise ConfigError(f"features.window={self.window!r}: expected one of {WINDOWS}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"features.win_length={self.win_length} exceeds n_fft={self.n_fft}")
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "frame_splicing"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"features.{name} must be positive")
        if self.log_zero_guard_type not in ("add", "clamp"):
            raise ConfigError(f"features.log_zero_guard_type={self.log_zero_guard_type!r}: expected 'add' or 'clamp'")
        if isinstance(self.log_zero_guard, str) and self.log_zero_guard not in LOG_GUARD_NAMES:
            raise ConfigError(f"features.log_zero_guard={self.log_zero_guard!r}: a number or one of {LOG_GUARD_NAMES}")
        if self.mel_norm not in ("slaney", None):
            raise ConfigError(f"features.mel_norm={self.mel_norm!r}: expected 'slaney' or None")
        if self.exact_pad and self.hop_length % 2:
            raise ConfigError(f"features.exact_pad needs an even hop_length, got {self.hop_length}")
        if self.pad_to < 0:
            raise ConfigError(f"features.pad_to={self.pad_to} must be >= 0")
        high = self.sample_rate / 2 if self.highfreq is None else self.highfreq
        if not 0 <= self.lowfreq < high <= self.sample_rate / 2:
            raise ConfigError(f"features.lowfreq={self.lowfreq} / highfreq={self.highfreq} must satisfy "
                              f"0 <= lowfreq < highfreq <= sample_rate / 2")

    @property
    def feature_dim(self) -> int:
        """Channels the encoder receives: n_mels * frame_splicing."""
        return self.n_mels * self.frame_splicing


SUBSAMPLING = ("dw_striding", "striding")
CONV_NORMS = ("batch_norm", "layer_norm")


@dataclass(frozen=True)
class EncoderConfig:
    """FastConformer encoder (NeMo ConformerEncoder with dw_striding or striding subsampling)."""

    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 8
    ff_expansion_factor: int = 4  # feed-forward width = d_model * ff_expansion_factor
    conv_kernel_size: int = 9  # depthwise conv in the convolution module
    subsampling: str = "dw_striding"  # one of SUBSAMPLING: depthwise-separable or full stride-2 convs
    subsampling_factor: int = 8  # time reduction of the front end (power of 2)
    subsampling_conv_channels: int = 256
    conv_norm: str = "batch_norm"  # norm after the convolution module's depthwise conv: one of CONV_NORMS
    xscaling: bool = True  # scale subsampled features by sqrt(d_model)
    attention_bias: bool = True  # bias in attention and feed-forward linears (NeMo use_bias)
    convolution_bias: bool = True  # bias in convolution-module convs (NeMo use_bias)
    att_context_size: tuple[int, int] = (-1, -1)  # (left, right) frames; -1 = unlimited (full attention)
    pos_emb_max_len: int = 5000
    dropout: float = 0.1
    dropout_pre_encoder: float = 0.1
    dropout_att: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "att_context_size", tuple(int(x) for x in self.att_context_size))
        if self.d_model % self.n_heads:
            raise ConfigError(f"encoder.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        sf = self.subsampling_factor
        if sf < 2 or sf & (sf - 1):
            raise ConfigError(f"encoder.subsampling_factor={sf} must be a power of 2")
        if self.conv_kernel_size % 2 == 0:
            raise ConfigError(f"encoder.conv_kernel_size={self.conv_kernel_size} must be odd")
        if len(self.att_context_size) != 2:
            raise ConfigError(f"encoder.att_context_size={self.att_context_size} must be [left, right]")
        if self.subsampling not in SUBSAMPLING:
            raise ConfigError(f"encoder.subsampling={self.subsampling!r}: expected one of {SUBSAMPLING}")
        if self.conv_norm not in CONV_NORMS:
            raise ConfigError(f"encoder.conv_norm={self.conv_norm!r}: expected one of {CONV_NORMS}")

    @property
    def local_attention(self) -> bool:
        return any(c >= 0 for c in self.att_context_size)


@dataclass(frozen=True)
class PredictorConfig:
    """LSTM prediction network (NeMo RNNTDecoder)."""

    pred_hidden: int = 640
    pred_rnn_layers: int = 2
    dropout: float = 0.2


JOINT_ACTIVATIONS = ("relu", "sigmoid", "tanh")
DECODING_STRATEGIES = ("greedy_batch", "greedy")


@dataclass(frozen=True)
class JointConfig:
    """Joint network: act(enc_proj(f) + pred_proj(g)) -> token + duration logits."""

    joint_hidden: int = 640
    activation: str = "relu"  # one of JOINT_ACTIVATIONS (NeMo's RNNTJoint choices)
    dropout: float = 0.2

    def __post_init__(self):
        if self.activation not in JOINT_ACTIVATIONS:
            raise ConfigError(f"joint.activation={self.activation!r}: expected one of {JOINT_ACTIVATIONS}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024  # text tokens, blank excluded; blank id == vocab_size (the last logit)
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)  # frames a TDT emission may advance
    max_symbols_per_step: int = 10  # greedy guard: at most this many labels per frame
    # NeMo decoding.strategy, which decides the max-symbols rule (model/decoding.py): "greedy_batch"
    # (label looping, what every Parakeet checkpoint ships) or "greedy" (GreedyTDTInfer's frame loop)
    decoding: str = "greedy_batch"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    joint: JointConfig = field(default_factory=JointConfig)

    def __post_init__(self):
        object.__setattr__(self, "durations", tuple(int(d) for d in self.durations))
        if self.vocab_size <= 0:
            raise ConfigError(f"vocab_size={self.vocab_size} must be positive")
        if not self.durations or any(d < 0 for d in self.durations) or len(set(self.durations)) != len(self.durations):
            raise ConfigError(f"durations={self.durations} must be distinct non-negative ints")
        if self.max_symbols_per_step < 1:
            raise ConfigError(f"max_symbols_per_step={self.max_symbols_per_step} must be >= 1")
        if self.decoding not in DECODING_STRATEGIES:
            raise ConfigError(f"decoding={self.decoding!r}: expected one of {DECODING_STRATEGIES}")

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    @property
    def seconds_per_frame(self) -> float:
        """Encoder frame duration: hop * subsampling / rate = 160 * 8 / 16000 = 0.08 s."""
        f = self.features
        return f.hop_length * self.encoder.subsampling_factor / f.sample_rate

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys raise ConfigError naming them."""
        sections = {"features": FeatureConfig, "encoder": EncoderConfig, "predictor": PredictorConfig, "joint": JointConfig}
        kwargs: dict[str, Any] = {}
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, "config")
        for key, value in d.items():
            if key in sections:
                sub = sections[key]
                _check_keys(value, {f.name for f in dataclasses.fields(sub)}, f"config.{key}")
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        """From a transformers ParakeetTDTConfig `config.json` dict."""
        from .config_convert import config_from_hf

        return config_from_hf(d)

    @classmethod
    def from_nemo(cls, d: dict[str, Any]) -> "ModelConfig":
        """From a NeMo `model_config.yaml` dict (EncDecRNNTBPEModel with a TDT loss)."""
        from .config_convert import config_from_nemo

        return config_from_nemo(d)

    def to_hf(self) -> dict[str, Any]:
        from .config_convert import config_to_hf

        return config_to_hf(self)


def _check_keys(d: Any, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


_PRESETS: dict[str, ModelConfig] = {
    # nvidia/parakeet-tdt-0.6b-v2: English, 1024 BPE tokens, 24 x 1024 FastConformer, no biases.
    "parakeet-tdt-0.6b-v2": ModelConfig(
        vocab_size=1024,
        encoder=EncoderConfig(attention_bias=False, convolution_bias=False),
    ),
    # nvidia/parakeet-tdt-0.6b-v3: 25 European languages, 8192 BPE tokens, same encoder.
    "parakeet-tdt-0.6b-v3": ModelConfig(
        vocab_size=8192,
        encoder=EncoderConfig(attention_bias=False, convolution_bias=False),
    ),
    # A few-MB model for tests and the bundled demo; same structure, tiny widths.
    "tiny": ModelConfig(
        vocab_size=64,
        features=FeatureConfig(n_mels=80),
        encoder=EncoderConfig(n_layers=2, d_model=64, n_heads=4, subsampling_conv_channels=32, ff_expansion_factor=2),
        predictor=PredictorConfig(pred_hidden=64),
        joint=JointConfig(joint_hidden=64),
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named architecture; `overrides` replace top-level fields (e.g. vocab_size=128)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(_PRESETS)}")
    return dataclasses.replace(_PRESETS[name], **overrides)


def preset_names() -> list[str]:
    return sorted(_PRESETS)
