"""What one CPU Transcriber actor holds at its peak, against what the planner reserves for it (job.cpu_actor_bytes).

    python tests/perf/bench_actor_memory.py [--preset parakeet-tdt-0.6b-v3] [--windows 12x10,60x10,1x300] [--batch-seconds S]
    python tests/perf/bench_actor_memory.py --ray [--windows 24x10,1x300]

A random-weight model of the preset's shape (the demo model's tokenizer, so it writes text; memory and compute are
the encoder's) is saved as a folder, as a job would load it. A child process on the CLI's allocator (tcmalloc) then
does what an actor does: builds a `Transcriber` (one torch thread, the CPU batch size the planner gives a model of
that size, or --batch-seconds), transcribes one window of synthetic clips (`--windows`: CLIPSxSECONDS each, a child
process apiece), passed as the decode stage's Arrow table, and reports:
  - the process's RSS before the model is loaded (Python, torch, pyarrow, Ray, the pipeline modules), after loading it,
    and its peak while transcribing (VmHWM);
  - the peak besides the checkpoint's stored size, with the audio of a full default window beyond the one measured
    (8 x max(batch, 600 s) of float32 waveforms, as the planner sizes windows, held once by the decode table), and
    that peak over what the planner
    reserves an actor (pipeline/job.py: cpu_actor_bytes; it must stay under 1).
A window of one batch keeps the run short (one 600 s batch of the 0.6B shape takes two minutes on one thread); the
activations of a call are one batch's, whatever the window. A single clip longer than the batch is one call of its
own (up to --chunk-seconds, 300 s by default): `1x300` measures that.

With `--ray`, the same model is run by the job itself: the windows' clips are written as 16-bit WAV files into one
folder and `parakeet-ray transcribe FOLDER OUT --model MODEL` runs as a user runs it (tcmalloc, an embedded Ray, the
planner's own sizing, decoding fused into the actors), while every Transcriber actor's VmHWM and VmRSS are read from
/proc every 0.5 s. Printed: the plan line, each actor's peak RSS (from the start of the process: the model load is
included here, as it is in what the actor holds), and that peak over what the planner reserved it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from jobs.bench import _status_mb as status_mb  # noqa: E402  (the figure `parakeet-ray bench --long` reports)


def child(folder: str, clips: int, seconds: float, batch_seconds: float) -> None:
    import numpy as np
    import pyarrow as pa

    from jobs.bench import synthetic_audio

    base_mb = status_mb("VmRSS")
    import ray.data  # an actor is a Ray worker: Ray and Ray Data are loaded there too

    del ray

    from pipeline.transcriber import Transcriber

    imported_mb = status_mb("VmRSS")
    tr = Transcriber(folder, batch_seconds=batch_seconds, num_threads=1)
    loaded_mb = status_mb("VmRSS")
    waves = [synthetic_audio(seconds, seed=i).astype(np.float32) for i in range(clips)]
    offsets = np.zeros(clips + 1, np.int64)
    np.cumsum([len(w) for w in waves], out=offsets[1:])
    table = pa.table({  # what decode_batch hands the actor
        "audio_uri": pa.array([f"clip{i}.wav" for i in range(clips)]),
        "waveform": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(waves))),
        "sample_rate": pa.array([16000] * clips, pa.int32()),
        "error": pa.nulls(clips, pa.string()), "error_kind": pa.nulls(clips, pa.string()),
    })
    del waves
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS: loading's own peak does not count
    window_mb = status_mb("VmRSS")
    t0 = time.perf_counter()
    out = tr(table)
    wall = time.perf_counter() - t0
    print(json.dumps({"rss_at_start_mb": base_mb, "rss_imported_mb": imported_mb, "rss_loaded_mb": loaded_mb,
                      "rss_with_window_mb": window_mb, "peak_mb": status_mb("VmHWM"), "wall_s": wall,
                      "rows": out.num_rows, "tokens": sum(len(t or []) for t in out.column("tokens").to_pylist())}))


def live_job(folder: str, windows: list[tuple[int, float]], work: Path, planned_mb: float, job_args: list[str]) -> dict:
    """`parakeet-ray transcribe` over the windows' clips with the model at `folder`, its actors' memory read from
    /proc while it runs."""
    import soundfile as sf

    from jobs.bench import synthetic_audio

    inputs = work / "in"
    inputs.mkdir()
    n = 0
    for clips, seconds in windows:
        for _ in range(clips):
            sf.write(inputs / f"clip{n:04d}.wav", synthetic_audio(seconds, seed=n), 16000, subtype="PCM_16")
            n += 1
    cmd = ["parakeet-ray", "transcribe", str(inputs), str(work / "out"), "--model", folder, *job_args]
    peaks: dict[int, dict] = {}
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while proc.poll() is None:
            for pid, status in _actor_status().items():
                peaks[pid] = status  # VmHWM only grows: the last read is the peak so far
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        wall = time.time() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {stderr[-3000:]}")
    plan = next((line for line in stderr.splitlines() if line.startswith("plan:")), "")
    summary = json.loads((work / "out" / "_summary.json").read_text())
    return {"plan": plan, "wall_s": wall, "files": summary["files"], "errors": summary["errors"],
            "audio_s": summary["audio_seconds"], "actors": [{"pid": pid, **s} for pid, s in sorted(peaks.items())],
            "reserved_mb": planned_mb}


def _actor_status() -> dict[int, dict]:
    """{pid: {"peak_mb", "rss_mb"}} of every process running a Transcriber (Linux /proc)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"Transcriber" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            out[int(pid)] = {"peak_mb": status_mb("VmHWM", pid), "rss_mb": status_mb("VmRSS", pid)}
        except (FileNotFoundError, ProcessLookupError, PermissionError, RuntimeError):
            continue  # ended while being read
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="parakeet-tdt-0.6b-v3")
    ap.add_argument("--windows", default="60x10",
                    help="windows to measure, each CLIPSxSECONDS, comma-separated (one child process each), e.g. 12x10,60x10,1x300")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="padded audio per model call (default: what the planner gives a model of this size on CPU)")
    ap.add_argument("--ray", action="store_true",
                    help="run the windows' clips through `parakeet-ray transcribe` and read its actors' peak RSS")
    ap.add_argument("--job-args", default="", help="with --ray: more `parakeet-ray transcribe` options, e.g. "
                    "'--actors 1 --threads-per-actor 1' (one single-thread actor decoding its own inputs)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.clips, args.seconds, args.batch_seconds)

    import model
    from jobs.allocator import find_tcmalloc
    from jobs.bench import _with_demo_tokenizer
    from model.checkpoint import checkpoint_bytes
    from pipeline.job import TranscribeConfig, batch_seconds_for, cpu_actor_bytes, window_seconds

    windows = [(int(c), float(x)) for c, x in (w.split("x") for w in args.windows.split(","))]
    mb = 1024**2
    env = dict(os.environ)
    lib = find_tcmalloc()
    if lib:
        env["LD_PRELOAD"] = lib
    results = []
    with tempfile.TemporaryDirectory(prefix="actor-memory-") as tmp:
        m = _with_demo_tokenizer(argparse.Namespace(preset=args.preset, precision="fp32"))
        folder = str(model.save(m, Path(tmp) / "model"))
        del m
        stored = checkpoint_bytes(folder)
        batch_s = args.batch_seconds or batch_seconds_for(0)
        cfg = TranscribeConfig("in", "out", folder, batch_seconds=batch_s)
        planned = cpu_actor_bytes(cfg, stored, model.inspect(folder)) / mb  # the job's planner reads the config too
        print(f"{args.preset} (random weights), stored {stored / mb:.0f} MB; batches of <= {batch_s:g} s; one torch "
              f"thread; {'tcmalloc' if lib else 'glibc malloc'}; the planner reserves {planned:.0f} MB an actor "
              f"(chunks of <= {cfg.chunk_seconds:g} s)", flush=True)
        if args.ray:
            r = live_job(folder, windows, Path(tmp), planned, args.job_args.split())
            print(f"  the job: {r['plan']}", flush=True)
            print(f"  {r['files']} files ({r['errors']} errors), {r['audio_s']:.0f} s of audio, {r['wall_s']:.1f} s wall", flush=True)
            for a in r["actors"]:
                print(f"  actor pid {a['pid']}: peak RSS {a['peak_mb']:.0f} MB (the model load included), "
                      f"{a['rss_mb']:.0f} MB at the last read; peak / reserved {a['peak_mb'] / planned:.2f}", flush=True)
            print(json.dumps({"preset": args.preset, "stored_mb": stored / mb, "batch_seconds": batch_s, **r}))
            return
        for clips, seconds in windows:
            proc = subprocess.run([sys.executable, __file__, "--child", folder, "--clips", str(clips), "--seconds",
                                   str(seconds), "--batch-seconds", str(batch_s)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            padded = max(min(batch_s, clips * seconds), seconds)  # the largest model call's padded audio
            # a full default window's waveforms beyond those measured
            extra_audio_mb = max(0.0, window_seconds(batch_s) - clips * seconds) * 16000 * 4 / mb
            over = r["peak_mb"] - stored / mb
            print(f"  {clips} x {seconds:g} s ({padded:g} s padded per call, {r['wall_s']:.1f} s): RSS at start "
                  f"{r['rss_at_start_mb']:.0f} MB, modules imported {r['rss_imported_mb']:.0f}, model loaded "
                  f"{r['rss_loaded_mb']:.0f}, with the window's table {r['rss_with_window_mb']:.0f}, peak {r['peak_mb']:.0f}"
                  f" -> {over:.0f} MB besides the checkpoint ({over + extra_audio_mb:.0f} with a full window's audio); "
                  f"peak / reserved {(r['peak_mb'] + extra_audio_mb) / planned:.2f}", flush=True)
            results.append({**r, "clips": clips, "seconds": seconds, "padded_s": padded, "over_checkpoint_mb": over,
                            "with_full_window_mb": over + extra_audio_mb})
    print(json.dumps({"preset": args.preset, "stored_mb": stored / mb, "batch_seconds": batch_s,
                      "reserved_mb": planned, "windows": results}))


if __name__ == "__main__":
    main()
