"""What a training checkpoint holds, and how it is read back.

One checkpoint is one folder (Ray Train merges every worker's files into it):
- rank 0: the model (`model.save`: config.json, model.safetensors, tokenizer; `model.load` and
  transformers' ParakeetForTDT read the folder as is) and trainer_state.pt (optimizer, step, epoch,
  best WER, the schedule's length);
- every rank r: rank-r.pt: the uids this epoch has used on that rank (trained or skipped), its skip
  counts, and its RNG states (torch, Python, NumPy).

Everything goes through torch.save / torch.load(weights_only=True): tensors and plain Python values only.
"""
from __future__ import annotations

import glob
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import model

TRAINER_STATE = "trainer_state.pt"


class UidSet:
    """A set of plan uids (non-negative ints) as a bitmap: 1 bit per row of the plan, so 10 million
    utterances cost 1.2 MB whatever the epoch has used (a Python set of ints costs ~60 bytes each)."""

    def __init__(self, uids=()):
        self._bits = np.zeros(0, dtype=bool)
        self.update(uids)

    def update(self, uids) -> None:
        uids = np.asarray(list(uids) if not isinstance(uids, np.ndarray) else uids, dtype=np.int64)
        uids = uids[uids >= 0]  # -1: the filler batch of a worker without data
        if not len(uids):
            return
        top = int(uids.max()) + 1
        if top > len(self._bits):
            grown = np.zeros(max(top, 2 * len(self._bits)), dtype=bool)
            grown[: len(self._bits)] = self._bits
            self._bits = grown
        self._bits[uids] = True

    def add(self, uid: int) -> None:
        self.update([uid])

    def __contains__(self, uid: int) -> bool:
        return 0 <= uid < len(self._bits) and bool(self._bits[uid])

    def __len__(self) -> int:
        return int(self._bits.sum())

    def array(self) -> np.ndarray:
        return np.flatnonzero(self._bits).astype(np.int64)

    def __eq__(self, other) -> bool:
        return set(self.array().tolist()) == set(other)


@dataclass
class RankState:
    consumed: UidSet = field(default_factory=UidSet)  # uids this epoch has used on this rank
    skipped: Counter = field(default_factory=Counter)  # skip reason -> rows, this epoch

    def save(self, folder: str, rank: int) -> None:
        torch.save({"consumed": torch.from_numpy(self.consumed.array()), "skipped": dict(self.skipped),
                    "torch_rng": torch.get_rng_state(), "python_rng": _python_state(), "numpy_rng": _numpy_state()},
                   os.path.join(folder, f"rank-{rank}.pt"))


def _python_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def save_checkpoint(folder: str, rank: int, rank_state: RankState, m: model.ParakeetTDT | None = None,
                    trainer_state: dict[str, Any] | None = None) -> None:
    rank_state.save(folder, rank)
    if m is not None:
        model.save(m, folder)
        torch.save(trainer_state, os.path.join(folder, TRAINER_STATE))


@dataclass
class Restored:
    trainer: dict[str, Any]  # optimizer, step, epoch, best_wer, total_steps
    consumed: UidSet  # union over every rank's file: what this epoch has used anywhere
    skipped: Counter  # summed over ranks
    mine: dict[str, Any] | None  # this rank's RNG states, when the checkpoint had this rank


def load_checkpoint(folder: str, rank: int) -> Restored:
    trainer = torch.load(os.path.join(folder, TRAINER_STATE), map_location="cpu", weights_only=True)
    consumed, skipped, mine = UidSet(), Counter(), None
    for path in sorted(glob.glob(os.path.join(folder, "rank-*.pt"))):
        part = torch.load(path, map_location="cpu", weights_only=True)
        consumed.update(part["consumed"].numpy())
        skipped.update(part["skipped"])
        if os.path.basename(path) == f"rank-{rank}.pt":
            mine = part
    return Restored(trainer, consumed, skipped, mine)


def restore_rng(part: dict[str, Any]) -> None:
    torch.set_rng_state(part["torch_rng"])
    version, state, gauss = part["python_rng"]
    random.setstate((version, tuple(state), gauss))
    n = part["numpy_rng"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
