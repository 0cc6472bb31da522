"""Broken inputs for the bad-input tests: each one a different way a file in a bucket goes wrong."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
CODEC_BAD = Path(__file__).resolve().parents[1] / "data" / "codecs" / "bad"  # tests/data/make_codec_fixtures.py


def make_bad_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """Write broken files into `folder`; returns {file name: (substring expected in its error, error_kind)}."""
    folder.mkdir(parents=True, exist_ok=True)
    wav = (AUDIO / "hello.wav").read_bytes()
    flac = (AUDIO / "flacclip.flac").read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "empty.wav": (b"", "empty file", "empty"),
        "text.wav": (b"this is a text file, not audio\n" * 20, "cannot decode", "decode"),
        "random.flac": (rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "cannot decode", "decode"),
        "truncated_header.wav": (wav[:30], "cannot decode", "decode"),
        "png.ogg": (b"\x89PNG\r\n\x1a\n" + bytes(200), "no audio stream", "no_audio"),  # FFmpeg sees an image
        "fake.mp3": (b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "cannot decode", "decode"),
        "mp4_container.m4a": (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(500), "cannot decode", "decode"),
        "truncated_stream.flac": (flac[:60], "truncated", "truncated"),
    }
    for name, (data, _, _) in files.items():
        (folder / name).write_bytes(data)
    sf.write(folder / "zero_samples.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(folder / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    expected = {name: (sub, kind) for name, (_, sub, kind) in files.items()}
    expected["zero_samples.wav"] = ("zero length", "empty")
    expected["nan.wav"] = ("NaN", "not_finite")
    for name, kind in json.loads((CODEC_BAD / "expected.json").read_text()).items():
        shutil.copy(CODEC_BAD / name, folder / f"codec-{name}")
        expected[f"codec-{name}"] = ({"truncated": "truncated", "no_audio": "no audio stream", "empty": "",
                                      "decode": "cannot decode"}[kind], kind)
    return expected
