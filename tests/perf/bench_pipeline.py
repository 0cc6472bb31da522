"""Benchmark (a script, not a test): the Ray pipeline's audio-seconds per second against the bare
model's `transcribe` on the same files, in the same run.

    python tests/perf/bench_pipeline.py [--model DIR] [--files 120] [--threads 2]

Without --model, a random-weight model is built (no download; --size tiny|small). The pipeline figure is end to
end: listing, actor start and model load, decode, inference and Parquet commits; the bare figure
is `model.transcribe(paths)` alone (decode + inference, model already loaded). Goal: >= 0.9x with
one actor.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

AUDIO = REPO / "tests" / "data" / "audio"
# Random-weight encoders: "tiny" is so fast (~900x real time on 2 cores) that fixed costs dominate;
# "small" (8 layers, d_model 256) spends its time in the model, as real checkpoints do.
SIZES = {"tiny": {}, "small": {"n_layers": 8, "d_model": 256, "n_heads": 4, "subsampling_conv_channels": 128}}


def make_corpus(folder: Path, n: int, seed: int = 0) -> float:
    """n utterances of 4-20 s built from the spoken test clips; returns total audio seconds."""
    from model.audio import decode_audio

    clips = [decode_audio(p)[0] for p in sorted(AUDIO.iterdir()) if p.suffix in (".wav", ".flac")]
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        target = rng.uniform(4.0, 20.0) * 16000
        parts, length = [], 0
        while length < target:
            clip = clips[rng.integers(len(clips))]
            parts += [clip, np.zeros(int(rng.uniform(0.1, 0.6) * 16000), np.float32)]
            length += len(clip) + len(parts[-1])
        wave = np.concatenate(parts)
        sf.write(folder / f"utt{i:05d}.wav", wave, 16000, subtype="PCM_16")
        total += len(wave) / 16000
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder/URI (default: a random tiny model)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="random model size when --model is not given")
    ap.add_argument("--files", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both the bare model and the actor")
    ap.add_argument("--batch-seconds", type=float, default=240.0)
    ap.add_argument("--window-rows", type=int, default=32)
    args = ap.parse_args()

    import ray
    import torch

    import model
    from pipeline.job import TranscribeConfig, run

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    model_uri = args.model
    if model_uri is None:
        from tests.model.helpers import tiny_model

        model_uri = str(model.save(tiny_model(work / "tok", **SIZES[args.size]), work / "model"))
    (work / "in").mkdir()
    audio_s = make_corpus(work / "in", args.files)
    paths = sorted(str(p) for p in (work / "in").iterdir())

    torch.set_num_threads(args.threads)
    m = model.load(model_uri)
    m.transcribe(paths[:2])  # warm-up

    def bare() -> float:
        t = time.monotonic()
        m.transcribe(paths, batch_size=16)
        return audio_s / (time.monotonic() - t)

    # Ray is started first so its background processes weigh on both measurements, and the bare
    # model runs before and after the pipeline: on a shared machine the load drifts.
    ray.init(num_cpus=max(4, args.threads + 2), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    before = bare()
    cfg = TranscribeConfig(str(work / "in"), str(work / "out"), model_uri, actors=1, gpus_per_actor=0,
                           cpus_per_actor=args.threads, batch_seconds=args.batch_seconds, window_rows=args.window_rows,
                           progress=False)
    summary = run(cfg)
    after = bare()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    bare_rate = (before + after) / 2
    assert summary["files"] == len(paths) and summary["errors"] == 0, summary
    piped = summary["audio_seconds_per_second"]
    print(json.dumps({
        "files": len(paths), "audio_seconds": round(audio_s, 1), "threads": args.threads,
        "bare_audio_s_per_s": round(bare_rate, 1), "bare_before_after": [round(before, 1), round(after, 1)],
        "pipeline_audio_s_per_s": round(piped, 1), "pipeline_wall_s": summary["wall_time_s"],
        "ratio": round(piped / bare_rate, 3),
    }))


if __name__ == "__main__":
    main()
