"""Confidence scores exactly as NeMo 3.0 computes them for TDT models (`decoding.confidence_cfg`).

Per joint evaluation (a "step" of label looping), from the logits the greedy decoder already has:
- the frame measure of the token distribution (log_softmax over the V + 1 token logits), one of
  NeMo's `asr_confidence_utils.get_confidence_measure_bank()`: `max_prob`, or a normalised entropy
  (`gibbs`, `tsallis`, `renyi`; `lin` or `exp` normalisation) with power `alpha`, all mapped to [0, 1]
  with v = V + 1 (vocabulary plus blank);
- with `tdt_include_duration`, also the measure of the duration distribution (NeMo normalises it with
  the same v = V + 1), and the step's score is `aggregation([token, duration])`.

A token's confidence is its emitting step's score (`exclude_blank`, NeMo's default:
`non_blank_step_confidence_precomputed`); with blanks included it is `aggregation([its score] + the
scores of the blank steps after it, up to the next token)` (`RNNTDecoding.compute_confidence` walks the
steps backwards; blank steps before the first token belong to no token). A word's confidence is the
aggregation of its tokens' (NeMo's SentencePiece grouping: a piece with a leading '▁' starts a word).
The utterance's confidence is the aggregation of its words' (NeMo has none; min by default: the least
sure word). Defaults are NeMo's: entropy, tsallis, alpha 0.33, exp, exclude_blank, aggregation min.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

METHODS = ("max_prob", "entropy")
ENTROPY_TYPES = ("gibbs", "tsallis", "renyi")
ENTROPY_NORMS = ("lin", "exp")
AGGREGATIONS = ("mean", "min", "max", "prod")


@dataclass(frozen=True)
class ConfidenceConfig:
    """NeMo's ConfidenceConfig + ConfidenceMethodConfig, flattened (names as NeMo's)."""

    name: str = "entropy"  # frame measure: max_prob or entropy
    entropy_type: str = "tsallis"  # gibbs, tsallis or renyi (name == entropy)
    alpha: float = 0.33  # power of the probabilities (> 0); 1 = plain Shannon entropy / max probability
    entropy_norm: str = "exp"  # lin or exp mapping of the entropy to [0, 1]
    exclude_blank: bool = True  # token confidence from its own step only
    aggregation: str = "min"  # tokens -> word -> utterance (and blanks into tokens): mean, min, max, prod
    tdt_include_duration: bool = False  # also score the duration distribution

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"confidence name={self.name!r}: expected one of {METHODS}")
        if self.entropy_type not in ENTROPY_TYPES:
            raise ValueError(f"confidence entropy_type={self.entropy_type!r}: expected one of {ENTROPY_TYPES}")
        if self.entropy_norm not in ENTROPY_NORMS:
            raise ValueError(f"confidence entropy_norm={self.entropy_norm!r}: expected one of {ENTROPY_NORMS}")
        if not self.alpha > 0:
            raise ValueError(f"confidence alpha={self.alpha} must be > 0")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"confidence aggregation={self.aggregation!r}: expected one of {AGGREGATIONS}")


DEFAULT_CONFIDENCE = ConfidenceConfig()  # what transcribe() scores with unless told otherwise


def frame_confidence(log_probs: torch.Tensor, cfg: ConfidenceConfig, v: int) -> torch.Tensor:
    """(..., C) log-probabilities -> (...) confidence in [0, 1]; v: NeMo's num_tokens (V + 1)."""
    x = torch.nan_to_num(log_probs)
    t = cfg.alpha
    if cfg.name == "max_prob":
        m = x.max(dim=-1).values
        if t == 1.0:
            return (m.exp() * v - 1) / (v - 1)
        return ((m * t).exp() * math.pow(v, t) - 1) / (math.pow(v, t) - 1)
    if t == 1.0:  # every entropy type is Gibbs (Shannon) entropy at alpha 1
        neg = (x.exp() * x).sum(-1)
        return 1 + neg / math.log(v) if cfg.entropy_norm == "lin" else (neg.exp() * v - 1) / (v - 1)
    if cfg.entropy_type == "gibbs":
        neg = ((x * t).exp() * x).sum(-1)
        if cfg.entropy_norm == "lin":
            return 1 + neg / math.log(v) / math.pow(v, 1 - t)
        floor = math.pow(v, -t * math.pow(v, 1 - t))
        return ((neg * t).exp() - floor) / (1 - floor)
    power_sum = (x * t).exp().sum(-1)  # sum_i p_i ** alpha
    if cfg.entropy_type == "tsallis":
        if cfg.entropy_norm == "lin":
            return 1 + (1 - power_sum) / (math.pow(v, 1 - t) - 1)
        floor = math.exp((1 - math.pow(v, 1 - t)) / (1 - t))
        return (((1 - power_sum) / (1 - t)).exp() - floor) / (1 - floor)
    if cfg.entropy_norm == "lin":  # renyi
        return 1 + power_sum.log2() / (t - 1) / math.log(v, 2)
    return (power_sum.pow(1 / (t - 1)) * v - 1) / (v - 1)


def step_confidence(logits: torch.Tensor, blank_id: int, cfg: ConfidenceConfig) -> torch.Tensor:
    """(..., V + 1 + D) joint logits -> (...) the step's score (float32, as NeMo's float logits)."""
    logits = logits.float()
    v = blank_id + 1
    score = frame_confidence(torch.log_softmax(logits[..., :v], dim=-1), cfg, v)
    if cfg.tdt_include_duration:
        duration = frame_confidence(torch.log_softmax(logits[..., v:], dim=-1), cfg, v)
        score = aggregate_pair(score, duration, cfg.aggregation)
    return score


def aggregate_pair(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """aggregation([a, b]) elementwise."""
    if how == "min":
        return torch.minimum(a, b)
    if how == "max":
        return torch.maximum(a, b)
    if how == "prod":
        return a * b
    return (a + b) / 2


def aggregate(values: Sequence[float], how: str) -> float:
    """NeMo's get_confidence_aggregation_bank(): mean, min, max, prod of a non-empty list."""
    if how == "mean":
        return sum(values) / len(values)
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return math.prod(values)


class BlankScores:
    """Running aggregation of each row's blank-step scores since its last emitted token (B rows).
    Updated in place, so the tensors can be static buffers of a captured CUDA graph (model/label_looping.py)."""

    def __init__(self, b: int, how: str, device):
        self.how = how
        init = {"min": math.inf, "max": -math.inf, "prod": 1.0, "mean": 0.0}[how]
        self.init = init
        self.acc = torch.full((b,), init, dtype=torch.float64, device=device)
        self.n = torch.zeros(b, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.acc.fill_(self.init)
        self.n.zero_()

    def add(self, scores: torch.Tensor, mask: torch.Tensor) -> None:
        s = scores.to(torch.float64)
        if self.how == "min":
            new = torch.minimum(self.acc, s)
        elif self.how == "max":
            new = torch.maximum(self.acc, s)
        elif self.how == "prod":
            new = self.acc * s
        else:
            new = self.acc + s
        self.acc.copy_(torch.where(mask, new, self.acc))
        self.n.add_(mask.long())

    def take(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(acc, n) of every row, then reset the rows in `mask` (they just emitted a token)."""
        acc, n = self.acc.clone(), self.n.clone()
        self.acc.masked_fill_(mask, self.init)
        self.n.masked_fill_(mask, 0)
        return acc, n


def with_blanks(score: float, acc: float, n: int, how: str) -> float:
    """aggregation([score] + the n blank scores whose running aggregate is acc)."""
    if n == 0:
        return score
    if how == "min":
        return min(score, acc)
    if how == "max":
        return max(score, acc)
    if how == "prod":
        return score * acc
    return (score + acc) / (1 + n)


def word_token_groups(token_ids: Sequence[int], pieces: Sequence[str], decode) -> list[list[int]]:
    """Token indices of each word, NeMo's `_aggregate_token_confidence_subwords_sentencepiece` grouping:
    a token whose piece differs from its decoded text (a leading '▁') starts a word; a lone '▁'
    piece's token is dropped when the next token starts a word."""
    groups: list[list[int]] = []
    j, prev_unk, prev_underline = 0, False, False
    for i, tid in enumerate(token_ids):
        piece = pieces[int(tid)]
        if (piece != decode([int(tid)]) or prev_unk) and i > j:
            if not prev_underline:
                groups.append(list(range(j, i)))
            j = i
        prev_unk = piece == "<unk>"
        prev_underline = piece == "▁"
    if token_ids and not prev_underline:
        groups.append(list(range(j, len(token_ids))))
    return groups
