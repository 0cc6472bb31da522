"""SpecAugment (Park et al. 2019) as NeMo's SpectrogramAugmentation applies it: frequency and time
masks filled with zeros (the features are already normalised), training only."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_masks: int = 2  # parakeet: 2 masks ...
    freq_width: int = 27  # ... of up to 27 mel bins
    time_masks: int = 10  # parakeet: 10 masks ...
    time_width: float = 0.05  # ... each up to 5% of the utterance's valid frames


def spec_augment(features: torch.Tensor, lengths: torch.Tensor, cfg: SpecAugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """features (B, n_mels, F), lengths (B,) valid frames -> masked copy (same shape)."""
    b, n_mels, frames = features.shape
    keep = torch.ones(b, n_mels, frames, dtype=torch.bool, device=features.device)
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(features.device)  # noqa: E731
    mel = torch.arange(n_mels, device=features.device)
    time = torch.arange(frames, device=features.device)
    for _ in range(cfg.freq_masks):
        width = (rand(b) * (min(cfg.freq_width, n_mels) + 1)).long()
        start = (rand(b) * (n_mels - width + 1).float()).long()
        keep &= ~((mel[None, :] >= start[:, None]) & (mel[None, :] < (start + width)[:, None]))[:, :, None]
    max_t = (lengths.float() * cfg.time_width).long().clamp(min=1).to(features.device)
    for _ in range(cfg.time_masks):
        width = (rand(b) * (max_t + 1).float()).long()
        start = (rand(b) * (lengths.to(features.device) - width + 1).clamp(min=1).float()).long()
        keep &= ~((time[None, :] >= start[:, None]) & (time[None, :] < (start + width)[:, None]))[:, None, :]
    return features * keep
