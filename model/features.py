"""NeMo's log-mel front end (AudioToMelSpectrogramPreprocessor), batched, on any device.

waveform -> preemphasis -> |STFT|^2 (symmetric Hann 400, hop 160, n_fft 512, centred, zero pad)
-> slaney mel (128) -> log(x + 2^-24) -> per-feature normalisation over valid frames -> padded
frames zeroed. Always computed in float32, whatever the model dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import FeatureConfig

NORMALIZE_EPS = 1e-5  # added to the std, as NeMo does


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.atleast_1d(np.asarray(f, dtype=np.float64))
    f_sp = 200.0 / 3  # linear part: 66.67 Hz per mel below 1 kHz
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = f >= min_log_hz
    mels[log_region] = min_log_mel + np.log(f[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = m >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (m[log_region] - min_log_mel))
    return freqs


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-scale, slaney-normalised triangular filters, as librosa.filters.mel(norm='slaney').

    Returns (n_mels, n_fft // 2 + 1) float32.
    """
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0)[0], _hz_to_mel_slaney(sample_rate / 2)[0], n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels])  # slaney area normalisation
    return (weights * enorm[:, None]).astype(np.float32)


class LogMelFeatures(nn.Module):
    """`forward(waveforms (B, N) float, lengths (B,) samples) -> (features (B, n_mels, F), frames (B,))`."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=False, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        fb = torch.from_numpy(mel_filterbank(config.sample_rate, config.n_fft, config.n_mels))
        self.register_buffer("filterbank", fb, persistent=False)  # (n_mels, n_fft // 2 + 1)

    def _apply(self, fn, recurse=True):
        """Device moves apply; dtype casts do not: a bf16/fp16 model keeps an exact float32 front end."""
        super()._apply(fn, recurse)
        if self.window.dtype != torch.float32 or self.filterbank.dtype != torch.float32:
            dev = self.window.device
            self.window = torch.hann_window(self.config.win_length, periodic=False, dtype=torch.float32, device=dev)
            fb = mel_filterbank(self.config.sample_rate, self.config.n_fft, self.config.n_mels)
            self.filterbank = torch.from_numpy(fb).to(dev)
        return self

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid feature frames for `lengths` samples: floor(N / hop) (NeMo's get_seq_len, centred STFT)."""
        pad = self.config.n_fft // 2 * 2
        return torch.div(lengths + pad - self.config.n_fft, self.config.hop_length, rounding_mode="floor").long()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x = waveforms.float()
        lengths = lengths.to(x.device)
        if self.training and c.dither > 0:
            x = x + c.dither * torch.randn_like(x)
        time_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, N)
        if c.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - c.preemphasis * x[:, :-1]], dim=1)
        x = x.masked_fill(~time_mask, 0.0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(
                x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window.float(),
                center=True, pad_mode="constant", return_complex=True,
            )  # (B, n_fft // 2 + 1, F)
            power = torch.view_as_real(spec).pow(2).sum(-1)  # |X|^2
            mel = torch.matmul(self.filterbank.float(), power)  # (B, n_mels, F); fp32 even in a bf16 model
            feats = torch.log(mel + c.log_zero_guard)
        frames = self.frame_lengths(lengths)
        valid = torch.arange(feats.shape[-1], device=x.device)[None, :] < frames[:, None]  # (B, F)
        if c.normalize == "per_feature":
            feats = normalize_per_feature(feats, valid, frames)
        return feats.masked_fill(~valid[:, None, :], 0.0), frames


def normalize_per_feature(feats: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (n-1) std per mel bin over each row's valid frames. feats (B, M, F)."""
    m = valid[:, None, :].to(feats.dtype)
    n = frames.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = (feats * m).sum(-1, keepdim=True) / n
    var = (((feats - mean) * m) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
    return (feats - mean) / (var.sqrt() + NORMALIZE_EPS)
