"""Parakeet TDT in plain PyTorch: `model.load(path_or_uri).transcribe([...])`.

The names below are loaded on first use (PEP 562), so `import model.audio` (what the pipeline's decode tasks
need) costs numpy, soundfile and soxr, not torch: a Ray worker that only decodes skips a 1.3 s import.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "AudioDecodeError": "audio", "decode_audio": "audio",
    "CheckpointError": "checkpoint", "inspect": "checkpoint", "load": "checkpoint", "save": "checkpoint",
    "ConfidenceConfig": "confidence",
    "ConfigError": "config", "ModelConfig": "config", "preset": "config",
    "ParakeetTDT": "parakeet",
    "Segment": "records", "Token": "records", "Transcript": "records", "Word": "records",
    "Tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .audio import AudioDecodeError, decode_audio
    from .checkpoint import CheckpointError, inspect, load, save
    from .confidence import ConfidenceConfig
    from .config import ConfigError, ModelConfig, preset
    from .parakeet import ParakeetTDT
    from .records import Segment, Token, Transcript, Word
    from .tokenizer import Tokenizer
