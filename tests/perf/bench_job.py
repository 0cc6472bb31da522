"""The transcription job against the model's own best throughput, on the same files, in one run.

    python tests/perf/bench_job.py [--files 3000] [--model DIR]

The corpus is `--files` hard links to the espeak clips in tests/data/audio (short clips, ~3 s each). Printed:
  - the model's best: every file decoded beforehand, sorted by duration, `transcribe` with torch on all cores,
    on the allocator the CLI uses (tcmalloc when present), the best of batch sizes 32, 64, 128 and 256 (the bundled
    demo model unless --model);
  - the job at its defaults: `parakeet-ray transcribe FOLDER OUT` as a user runs it (a subprocess; tcmalloc,
    embedded Ray, automatic sizing), its wall time from process start to exit;
  - the ratio with start-up (audio / whole wall), and in steady state, two ways: the job is run a second time on
    twice the files, and the marginal rate (extra audio / extra wall) is what the job does once it is running (the
    fixed costs, Ray start, planning, actor start and model load, shutdown, cancel out; noisy, a difference of two
    walls); and from the second run's rows, whose processed_at is their model call's start: the audio of the inner
    calls over the time from the second call's start to the last's (what the model actor gets through while
    decoding and commits run alongside it);
  - where the job's time went: process start -> job start (imports, allocator re-exec), job start -> first commit
    (listing, planning, Ray start, model actor start and load, the first window of up to 1024 inputs), first ->
    last commit, last commit -> exit (summary, Ray shutdown), and the fixed cost the two runs imply.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
AUDIO = ROOT / "tests" / "data" / "audio"
DEMO = ROOT / "model" / "pretrained" / "parakeet-tdt-demo"


def make_corpus(folder: Path, n: int) -> None:
    clips = sorted(p for p in AUDIO.iterdir() if p.suffix in (".wav", ".flac"))
    folder.mkdir(parents=True)
    for i in range(n):
        src = clips[i % len(clips)]
        os.link(src, folder / f"clip{i:05d}{src.suffix}")


def model_best(model_uri: str, paths: list[str], batches: list[int]) -> tuple[float, float, int]:
    """(audio seconds, seconds, batch size) of the fastest of `batches` on pre-decoded, duration-sorted waveforms,
    in a child process on the CLI's allocator."""
    from jobs.allocator import find_tcmalloc

    env = dict(os.environ)
    lib = find_tcmalloc()
    if lib:
        env["LD_PRELOAD"] = lib
    listing = Path(tempfile.mkstemp(suffix=".json")[1])
    listing.write_text(json.dumps(paths))
    try:
        out = subprocess.run([sys.executable, __file__, "--bare", str(listing), "--model", model_uri, "--batches",
                              ",".join(map(str, batches))], env=env, capture_output=True, text=True, check=True).stdout
    finally:
        listing.unlink()
    r = json.loads(out.strip().splitlines()[-1])
    return r["audio_s"], r["seconds"], r["batch"]


def _bare(listing: str, model_uri: str, batches: list[int]) -> None:
    import torch

    import model
    from model.audio import decode_audio

    torch.set_num_threads(os.cpu_count())
    m = model.load(model_uri)
    waves = sorted((decode_audio(p)[0] for p in json.loads(Path(listing).read_text())), key=len)
    audio_s = sum(len(w) for w in waves) / 16000
    best = None
    for batch in batches:
        m.transcribe(waves[:batch], batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        m.transcribe(waves, batch_size=batch)
        took = time.perf_counter() - t0
        if best is None or took < best[1]:
            best = (audio_s, took, batch)
    print(json.dumps({"audio_s": best[0], "seconds": best[1], "batch": best[2]}))


def run_job(folder: Path, out: Path, model_uri: str | None) -> dict:
    cmd = ["parakeet-ray", "transcribe", str(folder), str(out)] + (["--model", model_uri] if model_uri else [])
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t_end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {proc.stderr[-3000:]}")
    summary = json.loads((out / "_summary.json").read_text())
    files = sorted((out / "transcripts").glob("*.parquet"))
    commits = sorted((p.stat().st_mtime, pq.read_table(p, columns=["duration_s"]).column("duration_s").to_pylist())
                     for p in files)
    # Each model-actor call stamps its rows with one processed_at (the call's start): audio per call and the
    # time from one call's start to the next give the actor's steady rate, fixed costs excluded.
    calls: dict = {}
    for p in files:
        t = pq.read_table(p, columns=["processed_at", "duration_s"])
        for at, d in zip(t.column("processed_at").to_pylist(), t.column("duration_s").to_pylist()):
            calls[at] = calls.get(at, 0.0) + (d or 0.0)
    starts = sorted(calls)
    inner = starts[1:-1]  # the first call also waits for the first decodes, the last has no successor
    calls_rate = (sum(calls[a] for a in inner) / (starts[-1] - starts[1]).total_seconds()) if len(starts) >= 3 else None
    job_start = datetime.fromisoformat(summary["started_at"]).timestamp()
    first, last = commits[0][0], commits[-1][0]
    after_first = sum(sum(d for d in ds if d) for _, ds in commits[1:])
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("plan:")), "")
    return {"wall_s": t_end - t0, "audio_s": summary["audio_seconds"], "files": summary["files"], "commits": len(commits),
            "to_job_start_s": job_start - t0, "to_first_commit_s": first - job_start, "steady_s": last - first,
            "after_last_commit_s": t_end - last, "steady_audio_s": after_first, "plan": plan,
            "calls": len(starts), "calls_rate": calls_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--model", default=None, help="model folder/URI (default: the bundled demo model, as the job's default)")
    ap.add_argument("--batches", default="32,64,128,256", help="batch sizes the model's best is the fastest of")
    ap.add_argument("--bare", default=None, help=argparse.SUPPRESS)  # the child process of model_best
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.bare:
        return _bare(args.bare, args.model, batches)
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    try:
        make_corpus(work / "in", args.files)
        make_corpus(work / "in2", 2 * args.files)
        paths = sorted(str(p) for p in (work / "in").iterdir())
        job = run_job(work / "in", work / "out", args.model)
        double = run_job(work / "in2", work / "out2", args.model)
        audio_s, best_s, batch = model_best(args.model or str(DEMO), paths, batches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = audio_s / best_s
    whole = job["audio_s"] / job["wall_s"]
    steady = (double["audio_s"] - job["audio_s"]) / (double["wall_s"] - job["wall_s"])
    fixed = job["wall_s"] - job["audio_s"] / steady
    print(f"{job['files']} files, {audio_s / 3600:.2f} h of audio; {job['plan']}")
    print(f"model best (pre-decoded, sorted, batch {batch} the fastest of {args.batches}, {os.cpu_count()} threads): "
          f"{best_s:.1f} s, {best:.0f} audio-s/s")
    print(f"job at defaults: {job['wall_s']:.1f} s wall, {whole:.0f} audio-s/s -> {whole / best:.2f}x the model's best "
          f"with start-up; steady state ({2 * args.files} files: {double['wall_s']:.1f} s) {steady:.0f} audio-s/s -> "
          f"{steady / best:.2f}x   goal: >= 0.9x steady state")
    if double["calls_rate"]:
        print(f"steady state, from the model actor's calls ({2 * args.files} files: {double['calls'] - 2} calls of up to "
              f"1,024 inputs, start to next start, decoding and commits running alongside): {double['calls_rate']:.0f} "
              f"audio-s/s -> {double['calls_rate'] / best:.2f}x   goal: >= 0.9x")
    print(f"where the job's time went: process start -> job start {job['to_job_start_s']:.1f} s, job start -> first commit "
          f"{job['to_first_commit_s']:.1f} s, first -> last commit (steady) {job['steady_s']:.1f} s over {job['commits']} commits, "
          f"last commit -> exit {job['after_last_commit_s']:.1f} s; fixed cost implied by the two runs {fixed:.1f} s")
    print(json.dumps({**job, "double_wall_s": double["wall_s"], "fixed_s": fixed, "model_best_s": best_s, "model_best_audio_s_per_s": best, "ratio_with_startup": whole / best,
                      "ratio_steady": steady / best,
                      "ratio_steady_calls": (double["calls_rate"] or 0) / best}))


if __name__ == "__main__":
    main()
