"""Broken inputs for the bad-input tests: each one a different way a file in a bucket goes wrong."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"


def make_bad_corpus(folder: Path) -> dict[str, str]:
    """Write broken files into `folder`; returns {file name: substring expected in its error}."""
    folder.mkdir(parents=True, exist_ok=True)
    wav = (AUDIO / "hello.wav").read_bytes()
    flac = (AUDIO / "flacclip.flac").read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"this is a text file, not audio\n" * 20, "cannot decode"),
        "random.flac": (rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "cannot decode"),
        "truncated_header.wav": (wav[:30], "cannot decode"),
        "png.ogg": (b"\x89PNG\r\n\x1a\n" + bytes(200), "cannot decode"),
        "fake.mp3": (b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "cannot decode"),
        "mp4_container.m4a": (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(500), "cannot decode"),
        "truncated_stream.flac": (flac[:60], "cannot decode"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    sf.write(folder / "zero_samples.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(folder / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    expected = {name: sub for name, (_, sub) in files.items()}
    expected["zero_samples.wav"] = "zero length"
    expected["nan.wav"] = "NaN"
    return expected
