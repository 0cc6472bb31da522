"""Decode speed per format, in x real time on one core: libsndfile against FFmpeg (PyAV) where both can
read the file, FFmpeg alone otherwise (a benchmark, not a test).

    python tests/perf/bench_decode.py [--repeats 5] [--seconds 60]

Each example sentence of the codec corpus (tests/data/codecs/good) is decoded to float32 at its own rate
(as model/audio.py does before the downmix and resampling, which are the same for both); `--seconds`
sets how much audio each format is timed on (the clip, looped by re-decoding). Best of --repeats.
"""
from __future__ import annotations

import argparse
import io
import time
from collections import defaultdict
from pathlib import Path

from model.audio import _decode_ffmpeg, _decode_soundfile

GOOD = Path(__file__).resolve().parents[1] / "data" / "codecs" / "good"
SOURCES = Path(__file__).resolve().parents[2] / "examples" / "audio"


def rate(decode, data: bytes, seconds: float, repeats: int) -> float | None:
    """x real time of decode(BytesIO) on `data`, or None if it cannot read it."""
    try:
        x, sr = decode(io.BytesIO(data), "bench")
    except Exception:
        return None
    if x is None:
        return None
    clip = len(x) / sr
    loops = max(1, round(seconds / clip))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            decode(io.BytesIO(data), "bench")
        best = min(best, time.perf_counter() - t0)
    return loops * clip / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    files = defaultdict(list)
    for p in sorted(SOURCES.glob("*.wav")):
        files["wav"].append(p)
    for p in sorted(GOOD.iterdir()):
        label = p.name.split(".")[1]
        if label != "two-audio-streams":
            files[label].append(p)
    print(f"{'format':<12} {'libsndfile xRT':>15} {'FFmpeg xRT':>11}  decoder used")
    for label, paths in files.items():
        sndfile, ffmpeg = [], []
        for p in paths:
            data = p.read_bytes()
            sndfile.append(rate(_decode_soundfile, data, args.seconds / len(paths), args.repeats))
            ffmpeg.append(rate(_decode_ffmpeg, data, args.seconds / len(paths), args.repeats))
        mean = lambda xs: sum(xs) / len(xs) if all(x is not None for x in xs) else None  # noqa: E731
        s, f = mean(sndfile), mean(ffmpeg)
        used = "libsndfile" if s is not None else "FFmpeg"
        cell = lambda v: "-" if v is None else str(round(v))  # noqa: E731
        print(f"{label:<12} {cell(s):>15} {cell(f):>11}  {used}")


if __name__ == "__main__":
    main()
