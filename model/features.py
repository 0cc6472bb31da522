"""NeMo's log-mel front end (AudioToMelSpectrogramPreprocessor / FilterbankFeatures), batched, on any device.

waveform -> [exact_pad: zero pad (n_fft - hop) / 2 each side] -> preemphasis -> |STFT| ** mag_power
(symmetric window, centred unless exact_pad, zero pad) -> mel filterbank (librosa slaney scale) ->
log(x + guard) or log(max(x, guard)) -> frame splicing -> normalisation over valid frames -> frames past
each row's length set to pad_value -> frame axis padded to a multiple of pad_to. Parakeet's settings:
hann 400 / hop 160 / n_fft 512, 128 mels, power 2, log(x + 2^-24), per_feature, pad_to 0. Always
computed in float32, whatever the model dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
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


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   norm: str | None = "slaney") -> np.ndarray:
    """Slaney-scale triangular filters, as librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, norm=norm).

    Returns (n_mels, n_fft // 2 + 1) float32.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin)[0], _hz_to_mel_slaney(fmax)[0], n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]  # area normalisation
    return weights.astype(np.float32)


_WINDOW_FNS = {"hann": torch.hann_window, "hamming": torch.hamming_window,
               "blackman": torch.blackman_window, "bartlett": torch.bartlett_window}


def _window(c: FeatureConfig, device=None) -> torch.Tensor:
    return _WINDOW_FNS[c.window](c.win_length, periodic=False, dtype=torch.float32, device=device)


def _filterbank(c: FeatureConfig) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.lowfreq, c.highfreq, c.mel_norm))


def log_guard_value(c: FeatureConfig) -> float:
    """The log zero guard as a number (NeMo's 'tiny' / 'eps' name float32's finfo values)."""
    if isinstance(c.log_zero_guard, str):
        return float(getattr(torch.finfo(torch.float32), c.log_zero_guard))
    return float(c.log_zero_guard)


class LogMelFeatures(nn.Module):
    """`forward(waveforms (B, N) float, lengths (B,) samples) -> (features (B, n_mels, F), frames (B,))`."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.register_buffer("window", _window(config), persistent=False)
        self.register_buffer("filterbank", _filterbank(config), persistent=False)  # (n_mels, n_fft // 2 + 1)

    def _apply(self, fn, recurse=True):
        """Device moves apply; dtype casts do not: a bf16/fp16 model keeps an exact float32 front end."""
        super()._apply(fn, recurse)
        if self.window.dtype != torch.float32 or self.filterbank.dtype != torch.float32:
            dev = self.window.device
            self.window = _window(self.config, dev)
            self.filterbank = _filterbank(self.config).to(dev)
        return self

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid feature frames for `lengths` samples (NeMo's get_seq_len): floor((N + 2 pad - n_fft) / hop),
        pad = n_fft // 2 (centred STFT) or (n_fft - hop) // 2 (exact_pad); 0 samples give 0 frames."""
        c = self.config
        pad = (c.n_fft - c.hop_length) // 2 * 2 if c.exact_pad else c.n_fft // 2 * 2
        frames = torch.div(lengths + pad - c.n_fft, c.hop_length, rounding_mode="floor").long()
        return torch.where(lengths == 0, torch.zeros_like(frames), frames)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x = waveforms.float()
        lengths = lengths.to(x.device)
        keep = lengths  # samples of each row kept before the STFT (the rest is batch padding)
        if c.exact_pad:
            pad = (c.n_fft - c.hop_length) // 2
            x = F.pad(x, (pad, pad))
            # NeMo pads first and then, when it applies preemphasis, masks with the unpadded lengths: each
            # row's last `pad` samples are zeroed. Without preemphasis it masks nothing.
            keep = lengths if c.preemphasis else lengths + pad
        if self.training and c.dither > 0:
            x = x + c.dither * torch.randn_like(x)
        time_mask = torch.arange(x.shape[1], device=x.device)[None, :] < keep[:, None]  # (B, N)
        if c.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - c.preemphasis * x[:, :-1]], dim=1)
        x = x.masked_fill(~time_mask, 0.0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(
                x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window.float(),
                center=not c.exact_pad, pad_mode="constant", return_complex=True,
            )  # (B, n_fft // 2 + 1, F)
            power = power_spectrum(spec, c.mag_power)
            feats = torch.matmul(self.filterbank.float(), power)  # (B, n_mels, F); fp32 even in a bf16 model
            if c.log:
                guard = log_guard_value(c)
                feats = torch.log(feats + guard) if c.log_zero_guard_type == "add" else torch.log(feats.clamp(min=guard))
        if c.frame_splicing > 1:  # NeMo 3.0's splice_frames concatenates unshifted copies: (B, k * n_mels, F)
            feats = feats.repeat(1, c.frame_splicing, 1)
        frames = self.frame_lengths(lengths)
        valid = torch.arange(feats.shape[-1], device=x.device)[None, :] < frames[:, None]  # (B, F)
        if c.normalize == "per_feature":
            feats = normalize_per_feature(feats, valid, frames)
        elif c.normalize == "all_features":
            feats = normalize_all_features(feats, valid, frames)
        feats = feats.masked_fill(~valid[:, None, :], c.pad_value)
        if c.pad_to > 0 and feats.shape[-1] % c.pad_to:
            feats = F.pad(feats, (0, c.pad_to - feats.shape[-1] % c.pad_to), value=c.pad_value)
        return feats, frames


def power_spectrum(spec: torch.Tensor, mag_power: float = 2.0) -> torch.Tensor:
    """|X| ** mag_power of a complex STFT. |X|^2 is re^2 + im^2: the same float32 sum as
    `view_as_real(x).pow(2).sum(-1)` bit for bit, where a reduction over a last dim of 2 cost 8x as much
    (13 % of a small model's CPU call)."""
    power = spec.real.square() + spec.imag.square()
    return power if mag_power == 2.0 else power.pow(mag_power / 2)


def normalize_per_feature(feats: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (n-1) std per mel bin over each row's valid frames. feats (B, M, F)."""
    m = valid[:, None, :].to(feats.dtype)
    n = frames.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = (feats * m).sum(-1, keepdim=True) / n
    var = (((feats - mean) * m) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
    return (feats - mean) / (var.sqrt() + NORMALIZE_EPS)


def normalize_all_features(feats: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """One mean and (n-1) std per row over all its bins and valid frames (NeMo 'all_features'). feats (B, M, F)."""
    m = valid[:, None, :].to(feats.dtype)
    n = (frames.to(feats.dtype) * feats.shape[1]).clamp(min=1)[:, None, None]
    mean = (feats * m).sum((1, 2), keepdim=True) / n
    var = (((feats - mean) * m) ** 2).sum((1, 2), keepdim=True) / (n - 1).clamp(min=1)
    return (feats - mean) / (var.sqrt() + NORMALIZE_EPS)
