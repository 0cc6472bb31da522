"""ParakeetTDT: the whole model (features, encoder, prediction network, joint) plus its tokenizer."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .encoder import FastConformerEncoder
from .features import LogMelFeatures
from .joint import Joint
from .confidence import DEFAULT_CONFIDENCE, ConfidenceConfig
from .longform import DEFAULT_CHUNK_SECONDS
from .predictor import PredictionNetwork
from .records import Transcript
from .tokenizer import Tokenizer


class ParakeetTDT(nn.Module):
    """Token-and-Duration Transducer over a FastConformer encoder.

    `transcribe(paths_or_arrays)` is the one obvious entry point; `encode`, `preprocessor`,
    `encoder`, `predictor` and `joint` are the pieces training and decoding use.
    """

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces but config.vocab_size={config.vocab_size}")
        self.config = config
        self.tokenizer = tokenizer
        self.preprocessor = LogMelFeatures(config.features)
        self.encoder = FastConformerEncoder(config.features.feature_dim, config.encoder)
        self.predictor = PredictionNetwork(config.vocab_size, config.predictor)
        self.joint = Joint(config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms (B, N) float at 16 kHz, lengths (B,) samples -> (encoded (B, T, D), lengths (B,)).

        Features are computed in float32; the encoder runs in the model's dtype. A batch in pinned host
        memory is copied to a GPU without blocking.
        """
        blocking = not waveforms.is_pinned()
        waveforms, lengths = waveforms.to(self.device, non_blocking=not blocking), lengths.to(self.device)
        feats, feat_lengths = self.preprocessor(waveforms, lengths)
        return self.encoder(feats.to(self.dtype), feat_lengths)

    def set_attention_context(self, context: tuple[int, int] | None) -> None:
        """Limited-context attention ((L, R) encoder frames, e.g. (128, 128)) for long audio; None = full."""
        self.encoder.set_attention_context(context if context is not None else (-1, -1))

    def transcribe(
        self,
        inputs: Sequence[str | os.PathLike | np.ndarray | torch.Tensor],
        batch_size: int = 16,
        timestamps: bool = True,
        decoding: str | None = None,
        chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
        confidence: ConfidenceConfig | None = DEFAULT_CONFIDENCE,
    ) -> list[Transcript]:
        """Transcribe audio files (any soundfile format, any rate) or 16 kHz mono arrays, in input order.

        Inputs longer than `chunk_seconds` are split at pauses and stitched (any length works);
        `decoding` ("greedy_batch" / "greedy") overrides the checkpoint's decoding strategy;
        `confidence` (a model.ConfidenceConfig, NeMo's defaults) scores tokens, words and the input; None skips it.
        """
        from .transcribe import transcribe

        return transcribe(self, inputs, batch_size=batch_size, timestamps=timestamps, decoding=decoding,
                          chunk_seconds=chunk_seconds, confidence=confidence)

    def transcribe_waveforms(self, waveforms: torch.Tensor, lengths: torch.Tensor, timestamps: bool = True,
                             decoding: str | None = None,
                             confidence: ConfidenceConfig | None = DEFAULT_CONFIDENCE) -> list[Transcript]:
        """A padded batch: waveforms (B, N) float32 at 16 kHz, lengths (B,) samples (not chunked)."""
        from .transcribe import transcribe_waveforms

        return transcribe_waveforms(self, waveforms, lengths, timestamps=timestamps, decoding=decoding,
                                    confidence=confidence)
