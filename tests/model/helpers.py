"""Tiny models and tokenizers for tests: built in seconds, no downloads."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import model
from model.config import preset
from model.tokenizer import Tokenizer, train_sentencepiece

SENTENCES = [
    "Hello world, this is a test.",
    "How are you today? I am fine, thank you!",
    "The quick brown fox jumps over the lazy dog.",
    "It's a small model; it can't do much, but it runs.",
    "Seven ships sailed east at dawn. Nobody saw them go!",
    "Is this the real life? Is this just fantasy?",
    "We transcribe audio, one shard at a time.",
    "Numbers like 42 and 1999 are split into digits.",
]


def tiny_tokenizer(folder: str | Path, vocab_size: int = 64) -> Tokenizer:
    """A SentencePiece BPE model trained on SENTENCES (punctuation pieces included)."""
    return train_sentencepiece(SENTENCES * 4, folder, vocab_size=vocab_size)


def tiny_model(folder: str | Path, seed: int = 0, **encoder_overrides) -> model.ParakeetTDT:
    """A random-init tiny ParakeetTDT with a trained tiny tokenizer stored in `folder`."""
    tok = tiny_tokenizer(folder)
    cfg = preset("tiny", vocab_size=tok.vocab_size)
    if encoder_overrides:
        cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, **encoder_overrides))
    torch.manual_seed(seed)
    m = model.ParakeetTDT(cfg, tok)
    # Random BatchNorm statistics so the conv module is exercised like a trained model.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()
