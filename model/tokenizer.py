"""Text <-> token ids: a SentencePiece model (from .nemo archives and our folders) or a Hugging Face
`tokenizers` tokenizer.json (transformers ParakeetForTDT folders). Ids exclude the blank."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"


class Tokenizer:
    """`encode(text) -> ids`, `decode(ids) -> text`, `id_to_piece(id) -> '▁piece'`, `vocab_size`."""

    def __init__(self, spm_path: str | os.PathLike | None = None, hf_path: str | os.PathLike | None = None,
                 data: tuple[str, bytes] | None = None):
        if sum(x is not None for x in (spm_path, hf_path, data)) != 1:
            raise ValueError("give exactly one of spm_path / hf_path / data")
        self._spm = self._hf = None
        self._token_text: dict[int, str] = {}
        # The file's bytes are kept: `save` writes them, so the file itself (often in a temporary folder
        # of a .nemo extraction or a downloaded checkpoint) may be deleted once the tokenizer is built.
        if data is not None:
            kind, self._bytes = data
            if kind not in ("spm", "hf"):
                raise ValueError(f"tokenizer kind {kind!r}: expected 'spm' or 'hf'")
            spm_path = "<bytes>" if kind == "spm" else None
        else:
            self._bytes = Path(spm_path if spm_path is not None else hf_path).read_bytes()
        if spm_path is not None:
            import sentencepiece as spm

            self._spm = spm.SentencePieceProcessor(model_proto=self._bytes)
            self.pieces = [self._spm.id_to_piece(i) for i in range(self._spm.get_piece_size())]
        else:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_str(self._bytes.decode("utf-8"))
            vocab = self._hf.get_vocab(with_added_tokens=True)
            inverse = {i: p for p, i in vocab.items()}
            # transformers folders include the blank/pad token as the last id: it is not text
            n = max(inverse) + 1
            self.pieces = [inverse.get(i, "") for i in range(n)]
            if self.pieces and self.pieces[-1] in ("<pad>", "<blank>", "<unk_blank>"):
                self.pieces = self.pieces[:-1]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def data(self) -> tuple[str, bytes]:
        """(kind, file bytes): `Tokenizer(data=t.data)` rebuilds it, e.g. in a Ray task."""
        return ("spm" if self._spm is not None else "hf"), self._bytes

    @property
    def unk_id(self) -> int | None:
        """The id text with unknown characters encodes to (None when the tokenizer has none)."""
        if self._spm is not None:
            unk = self._spm.unk_id()
            return unk if unk >= 0 else None
        for piece in ("<unk>", "[UNK]"):
            if piece in self.pieces:
                return self.pieces.index(piece)
        return None

    def encode(self, text: str) -> list[int]:
        if self._spm is not None:
            return list(self._spm.encode(text))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        if len(ids) == 1:  # timestamps and confidences decode every token alone: once per id, then remembered
            return self.token_text(int(ids[0]))
        return self._decode([int(i) for i in ids])

    def token_text(self, i: int) -> str:
        """`decode([i])`, remembered per id (a vocabulary's worth at most)."""
        text = self._token_text.get(i)
        if text is None:
            text = self._token_text[int(i)] = self._decode([int(i)])
        return text

    def _decode(self, ids: list[int]) -> str:
        if self._spm is not None:
            return self._spm.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[int(i)]

    def piece_to_id(self, piece: str) -> int:
        if not hasattr(self, "_piece_index"):
            self._piece_index = {p: i for i, p in enumerate(self.pieces)}
        return self._piece_index[piece]

    def save(self, folder: str | os.PathLike) -> None:
        """Write the tokenizer file into `folder` (tokenizer.model or tokenizer.json)."""
        (Path(folder) / (SPM_FILE if self._spm is not None else HF_FILE)).write_bytes(self._bytes)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "Tokenizer":
        folder = Path(folder)
        if (folder / SPM_FILE).exists():
            return cls(spm_path=folder / SPM_FILE)
        if (folder / HF_FILE).exists():
            return cls(hf_path=folder / HF_FILE)
        raise FileNotFoundError(f"{folder}: no {SPM_FILE} or {HF_FILE}")


def train_sentencepiece(texts: Iterable[str], folder: str | os.PathLike, vocab_size: int, model_type: str = "bpe",
                        max_sentences: int = 1_000_000) -> Tokenizer:
    """Train a SentencePiece model on `texts` (any iterable: SentencePiece samples at most `max_sentences`
    of them, so memory stays bounded on a large corpus), write folder/tokenizer.model, return it."""
    import io

    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, input_sentence_size=max_sentences, shuffle_input_sentence=True, bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False,
        split_digits=True, num_threads=1, minloglevel=2,
    )
    (folder / SPM_FILE).write_bytes(buf.getvalue())
    return Tokenizer(spm_path=folder / SPM_FILE)
