"""Parakeet TDT in plain PyTorch: `model.load(path_or_uri).transcribe([...])`."""
from .audio import AudioDecodeError, decode_audio
from .checkpoint import CheckpointError, inspect, load, save
from .confidence import ConfidenceConfig
from .config import ConfigError, ModelConfig, preset
from .parakeet import ParakeetTDT
from .records import Segment, Token, Transcript, Word
from .tokenizer import Tokenizer

__all__ = [
    "AudioDecodeError", "CheckpointError", "ConfidenceConfig", "ConfigError", "ModelConfig", "ParakeetTDT", "Segment", "Token",
    "Tokenizer", "Transcript", "Word", "decode_audio", "inspect", "load", "preset", "save",
]
