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


@dataclass(frozen=True)
class FeatureConfig:
    """NeMo's AudioToMelSpectrogramPreprocessor settings used by every Parakeet model."""

    sample_rate: int = 16_000  # Hz
    n_fft: int = 512  # FFT size in samples (32 ms)
    win_length: int = 400  # 25 ms symmetric Hann window
    hop_length: int = 160  # 10 ms frame step
    n_mels: int = 128  # slaney-scale, slaney-normalised mel bins
    preemphasis: float = 0.97  # y[n] = x[n] - 0.97 x[n-1]; 0 disables
    log_zero_guard: float = 2.0**-24  # added before log
    normalize: str = "per_feature"  # per mel bin over valid frames, n-1 std; or "none"
    dither: float = 1e-5  # gaussian noise std added in training only

    def __post_init__(self):
        if self.normalize not in ("per_feature", "none"):
            raise ConfigError(f"features.normalize={self.normalize!r}: only 'per_feature' or 'none' are supported")
        if self.win_length > self.n_fft:
            raise ConfigError(f"features.win_length={self.win_length} exceeds n_fft={self.n_fft}")
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"features.{name} must be positive")


@dataclass(frozen=True)
class EncoderConfig:
    """FastConformer encoder (NeMo ConformerEncoder with dw_striding subsampling)."""

    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 8
    ff_expansion_factor: int = 4  # feed-forward width = d_model * ff_expansion_factor
    conv_kernel_size: int = 9  # depthwise conv in the convolution module
    subsampling_factor: int = 8  # time reduction of the dw_striding front end (power of 2)
    subsampling_conv_channels: int = 256
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

    @property
    def local_attention(self) -> bool:
        return any(c >= 0 for c in self.att_context_size)


@dataclass(frozen=True)
class PredictorConfig:
    """LSTM prediction network (NeMo RNNTDecoder)."""

    pred_hidden: int = 640
    pred_rnn_layers: int = 2
    dropout: float = 0.2


@dataclass(frozen=True)
class JointConfig:
    """Joint network: relu(enc_proj(f) + pred_proj(g)) -> token + duration logits."""

    joint_hidden: int = 640
    activation: str = "relu"
    dropout: float = 0.2

    def __post_init__(self):
        if self.activation != "relu":
            raise ConfigError(f"joint.activation={self.activation!r}: only 'relu' is supported")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024  # text tokens, blank excluded; blank id == vocab_size (the last logit)
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)  # frames a TDT emission may advance
    max_symbols_per_step: int = 10  # greedy guard: at most this many labels per frame
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
