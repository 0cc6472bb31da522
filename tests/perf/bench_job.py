"""The transcription job against the model's own best throughput, on the same files, in one run.

    python tests/perf/bench_job.py [--files 3000] [--scale 4] [--model DIR | --random small]

The corpus is `--files` hard links to the espeak clips in tests/data/audio (short clips, ~3 s each). Printed:
  - the model's best: every file decoded beforehand, sorted by duration, `transcribe` on all cores, on the allocator
    the CLI uses (tcmalloc when present): the fastest of one process with a torch thread per core and one
    single-thread process per core (each with every P-th waveform, started together), at batch sizes 32, 64, 128
    and 256 (the bundled demo model unless --model); each layout is timed before and after the jobs and its two
    passes averaged (the machine's speed drifts, and the fastest of eight single passes is biased fast);
  - the job at its defaults: `parakeet-ray transcribe FOLDER OUT` as a user runs it (a subprocess; tcmalloc,
    embedded Ray, automatic sizing), its wall time from process start to exit;
  - the ratio with start-up (audio / whole wall), and in steady state, two ways: the job is also run on
    `--scale` / 2 and `--scale` times the files (two runs planned alike: same windows, actors, decoding), and the
    marginal rate between them (extra audio / extra wall) is what the job does once it is running (the fixed costs,
    Ray start, planning, actor start and model load, the first and last windows, shutdown, cancel out; a difference
    of two walls, so the runs are made long); and from the longest run's rows, whose processed_at is their model
    call's start: with A actors, the audio of the calls from the (A+1)-th start up to the A-th last start, over that
    time (what the model actors get through while decoding and commits run alongside them; where the actors decode
    their own inputs, each start-to-start span holds the next window's decoding as well);
  - where the job's time went: process start -> job start (imports, allocator re-exec), job start -> first commit
    (listing, planning, Ray start, model actor start and load, the first window of up to 1024 inputs), first ->
    last commit, last commit -> exit (summary, Ray shutdown), and the fixed cost the two runs imply;
  - the CPU time the host stole from this VM (/proc/stat's steal) in the model's passes and in the longest job's
    steady state: a shared VM's speed swings, and a ratio taken while the host took cores is not the code's.
"""
import argparse
import json
import os
import re
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
from pipeline.transcriber import MODEL_THREAD_NAME  # noqa: E402
from tests.perf.bench_pipeline import SIZES  # noqa: E402
AUDIO = ROOT / "tests" / "data" / "audio"
DEMO = ROOT / "model" / "pretrained" / "parakeet-tdt-demo"


def make_corpus(folder: Path, n: int) -> None:
    clips = sorted(p for p in AUDIO.iterdir() if p.suffix in (".wav", ".flac"))
    folder.mkdir(parents=True)
    for i in range(n):
        src = clips[i % len(clips)]
        os.link(src, folder / f"clip{i:05d}{src.suffix}")


def model_best(model_uri: str, paths: list[str], batches: list[int]) -> dict:
    """The fastest way found to run the model on all cores, over pre-decoded, duration-sorted waveforms, on the
    CLI's allocator: one process with a torch thread per core, or one single-thread process per core, each given
    every P-th waveform (the layout the job's CPU actors can take), for each batch size of `batches`.

    The processes load, decode and warm up, then start each timed pass together (a line on their stdin); a pass
    takes the slowest process's time. Returns {"audio_s", "seconds", "batch", "processes", "threads", "all": [...]}."""
    from jobs.allocator import find_tcmalloc

    env = dict(os.environ)
    lib = find_tcmalloc()
    if lib:
        env["LD_PRELOAD"] = lib
    cores = os.cpu_count() or 1
    layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
    tried = []
    listing = Path(tempfile.mkstemp(suffix=".json")[1])
    listing.write_text(json.dumps(paths))
    try:
        for procs, threads in layouts:
            children = [subprocess.Popen([sys.executable, __file__, "--bare", str(listing), "--model", model_uri,
                                          "--batches", ",".join(map(str, batches)), "--shard", f"{r}/{procs}",
                                          "--threads", str(threads)],
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                        for r in range(procs)]
            try:
                audio = [json.loads(c.stdout.readline())["audio_s"] for c in children]  # each is loaded and warm
                for batch in batches:
                    m0 = machine_ticks()
                    for c in children:
                        c.stdin.write(f"{batch}\n")
                        c.stdin.flush()
                    took = max(json.loads(c.stdout.readline())["seconds"] for c in children)
                    steal = machine_ticks()["steal"] - m0["steal"]
                    tried.append({"audio_s": sum(audio), "seconds": took, "batch": batch, "processes": procs,
                                  "threads": threads, "steal_s": steal})
                for c in children:
                    c.stdin.close()
                    if c.wait() != 0:
                        raise SystemExit(f"model-best child failed (exit {c.returncode})")
            finally:
                for c in children:
                    if c.poll() is None:
                        c.kill()
    finally:
        listing.unlink()
    best = min(tried, key=lambda r: r["seconds"])
    return {**best, "all": tried}


def averaged(before: dict, after: dict) -> dict:
    """Two model_best results -> one: each layout's seconds the mean of its two passes, the best the fastest mean."""
    tried = [{**a, "seconds": (a["seconds"] + b["seconds"]) / 2, "passes": (a["seconds"], b["seconds"]),
              "steal_s": a["steal_s"] + b["steal_s"]}
             for a, b in zip(before["all"], after["all"])]
    best = min(tried, key=lambda r: r["seconds"])
    return {**best, "all": tried}


def _bare(listing: str, model_uri: str, batches: list[int], shard: str, threads: int) -> None:
    """A model-best child: decode its shard, warm up at every batch size, then for each batch size read from stdin,
    time one pass over the shard and print its seconds."""
    import torch

    import model
    from model.audio import decode_audio

    rank, procs = (int(x) for x in shard.split("/"))
    torch.set_num_threads(threads)
    m = model.load(model_uri)
    waves = sorted((decode_audio(p)[0] for p in json.loads(Path(listing).read_text())), key=len)[rank::procs]
    for batch in batches:
        m.transcribe(waves[:batch], batch_size=batch)  # warm-up
    print(json.dumps({"audio_s": sum(len(w) for w in waves) / 16000}), flush=True)
    for line in sys.stdin:
        batch = int(line)
        t0 = time.perf_counter()
        m.transcribe(waves, batch_size=batch)
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def run_job(folder: Path, out: Path, model_uri: str | None, sample_cpu: bool = False) -> dict:
    """One `parakeet-ray transcribe` run; with `sample_cpu`, every thread's CPU time on the machine is also read
    every CPU_SAMPLE_S while it runs, for the steady-state breakdown (cpu_breakdown)."""
    cmd = ["parakeet-ray", "transcribe", str(folder), str(out)] + (["--model", model_uri] if model_uri else [])
    snapshots = []
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while proc.poll() is None:
            if sample_cpu:
                snapshots.append((time.time(), thread_ticks(proc.pid), machine_ticks()))
            try:
                proc.wait(CPU_SAMPLE_S if sample_cpu else None)
            except subprocess.TimeoutExpired:
                pass
        t_end = time.time()
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {stderr[-3000:]}")
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
    plan = next((line for line in stderr.splitlines() if line.startswith("plan:")), "")
    actors = int(re.match(r"plan: (\d+) model actor", plan).group(1)) if plan else 1
    starts = sorted(calls)
    # The first round of calls (one an actor) also waits for start-up, the last round has no successor. Between the
    # first start of the second round and the first start of the last round every actor makes the same number of
    # whole calls, however their phases lie: the audio of the calls started in [starts[A], starts[-A]) over that
    # time. (A span to the very last start counts one call more than it holds when the actors run in step.)
    inner = starts[actors:-actors]
    calls_rate = (sum(calls[a] for a in inner) / (starts[-actors] - starts[actors]).total_seconds()
                  if len(starts) >= 3 * actors else None)
    job_start = datetime.fromisoformat(summary["started_at"]).timestamp()
    first, last = commits[0][0], commits[-1][0]
    after_first = sum(sum(d for d in ds if d) for _, ds in commits[1:])
    return {"wall_s": t_end - t0, "audio_s": summary["audio_seconds"], "files": summary["files"], "commits": len(commits),
            "to_job_start_s": job_start - t0, "to_first_commit_s": first - job_start, "steady_s": last - first,
            "after_last_commit_s": t_end - last, "steady_audio_s": after_first, "plan": plan,
            "calls": len(starts), "actors": actors, "calls_rate": calls_rate,
            "cpu": cpu_breakdown(snapshots, first, last) if sample_cpu else None}


# ---- where the CPU goes in steady state ------------------------------------------------------------------------
CPU_SAMPLE_S = 2.0
ROLES = {
    "model": "the model actors' model threads (torch)",
    "actor": "the model actors' other threads (decoding each window, Ray Data's task)",
    "driver": "the driver (Ray Data's executor loop, progress)",
    "commit": "commit workers (Parquet writes; idle between them)",
    "helpers": "Ray Data's helper actors (stats, autoscaling, actor locations)",
    "services": "Ray's services (raylet, GCS, dashboard and runtime-env agents, log monitor)",
    "other": "everything else (kernel threads, this bench, the VM)",
}


def thread_ticks(driver_pid: int) -> dict:
    """{(pid, tid): (role, CPU ticks so far)} of every thread on the machine (Linux /proc)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # ended while being read
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue  # this thread ended while being read; its process's others are still read
            comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            out[(int(pid), int(tid))] = (_role(int(pid), cmd, comm, driver_pid), int(fields[11]) + int(fields[12]))
    return out


def machine_ticks() -> dict:
    """The machine's idle and stolen CPU time so far in core-seconds, all cores (Linux /proc/stat: idle + iowait, and
    steal: time this VM's CPUs were ready to run while the hypervisor ran something else)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:  # not Linux: nothing to tell
        fields = []
    ticks = [int(x) for x in fields] + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    return {"idle": (ticks[3] + ticks[4]) / hz, "steal": ticks[7] / hz}


def _role(pid: int, cmd: str, comm: str, driver_pid: int) -> str:
    if "Transcriber" in cmd:  # ray::MapWorker(MapBatches(decode_batch)->MapBatches(Transcriber)) and the like
        return "model" if comm == MODEL_THREAD_NAME else "actor"
    if pid == driver_pid:
        return "driver"
    if cmd.startswith("ray::IDLE") or "commit_batch" in cmd:
        return "commit"
    if cmd.startswith("ray::") and "Agent" not in cmd:
        return "helpers"
    if "/ray/" in cmd or cmd.startswith("ray::"):
        return "services"
    return "other"


def cpu_breakdown(snapshots: list, first_commit: float, last_commit: float) -> dict | None:
    """Core-seconds by role between the first snapshot after the first commit and the last one before the last
    commit (the steady state: every actor loaded and busy), and the cores the machine had in that time. A thread
    that started in between counts from its start; one that ended in between counts up to the last snapshot that
    saw it (an actor whose last window is done has its model thread stopped while the other still works: dropping
    that thread's whole time, as the first version of this did, put 44 % of one run in "idle")."""
    inner = [s for s in snapshots if first_commit <= s[0] <= last_commit]
    if len(inner) < 2:
        return None
    (ta, a, ma), (tb, _, mb) = inner[0], inner[-1]
    last_seen: dict = {}
    for _, snap, _ in inner:
        last_seen.update(snap)
    hz = os.sysconf("SC_CLK_TCK")
    by_role = dict.fromkeys(ROLES, 0.0)
    for key, (role, ticks) in last_seen.items():
        by_role[role] += (ticks - a.get(key, (role, 0))[1]) / hz
    return {"seconds": tb - ta, "cores": os.cpu_count() or 1, "core_s": by_role,
            "idle_s": mb["idle"] - ma["idle"], "steal_s": mb["steal"] - ma["steal"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--scale", type=int, default=4, help="the longest run's files, as a multiple of --files (even)")
    ap.add_argument("--model", default=None, help="model folder/URI (default: the bundled demo model, as the job's default)")
    ap.add_argument("--random", default=None, choices=sorted(SIZES),
                    help="instead of --model, a random-weight model of this size (bench_pipeline.SIZES): how the ratio "
                         "goes with a heavier model, as fixed per-input costs weigh less")
    ap.add_argument("--batches", default="32,64,128,256", help="batch sizes the model's best is the fastest of")
    ap.add_argument("--bare", default=None, help=argparse.SUPPRESS)  # a child process of model_best
    ap.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.bare:
        return _bare(args.bare, args.model, batches, args.shard, args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    if args.random:
        import model
        from tests.model.helpers import tiny_model

        args.model = str(model.save(tiny_model(work / "tok", **SIZES[args.random]), work / "model"))
    try:
        make_corpus(work / "in", args.files)
        make_corpus(work / "in1", args.scale * args.files // 2)
        make_corpus(work / "in2", args.scale * args.files)
        paths = sorted(str(p) for p in (work / "in").iterdir())
        # The model's best is measured before and after the jobs and each layout's two passes are averaged: this
        # VM's speed drifts by 10-20 % an hour, and the fastest of eight single passes is biased fast.
        before = model_best(args.model or str(DEMO), paths, batches)
        job = run_job(work / "in", work / "out", args.model)
        half = run_job(work / "in1", work / "out1", args.model)
        double = run_job(work / "in2", work / "out2", args.model, sample_cpu=sys.platform.startswith("linux"))
        after = model_best(args.model or str(DEMO), paths, batches)
        mb = averaged(before, after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    audio_s, best_s = mb["audio_s"], mb["seconds"]
    best = audio_s / best_s
    whole = job["audio_s"] / job["wall_s"]
    # The marginal rate is taken between the two long runs, whose plans are the same but for the input count (the
    # 3,000-clip run gets 512-clip windows, so its fill and drain are shorter and a difference with it would charge
    # the longer run's bigger first and last windows to the steady state).
    steady = (double["audio_s"] - half["audio_s"]) / (double["wall_s"] - half["wall_s"])
    fixed = job["wall_s"] - job["audio_s"] / steady
    same_plan = half["plan"] == double["plan"]  # the plan line holds no input count
    print(f"{job['files']} files, {audio_s / 3600:.2f} h of audio; {job['plan']}")
    for r in mb["all"]:
        print(f"  model: {r['processes']} process(es) x {r['threads']} thread(s), batch {r['batch']}: {r['seconds']:.2f} s "
              f"(before the jobs {r['passes'][0]:.2f}, after {r['passes'][1]:.2f}), {r['audio_s'] / r['seconds']:.0f} audio-s/s, "
              f"{r['steal_s']:.1f} core-s stolen by the host in the two passes")
    print(f"model best (pre-decoded, sorted; the fastest above: {mb['processes']} process(es) x {mb['threads']} "
          f"thread(s), batch {mb['batch']}): {best_s:.1f} s, {best:.0f} audio-s/s")
    print(f"job at defaults: {job['wall_s']:.1f} s wall, {whole:.0f} audio-s/s -> {whole / best:.2f}x the model's best "
          f"with start-up; steady state, marginal ({args.scale * args.files // 2} files: {half['wall_s']:.1f} s, "
          f"{args.scale * args.files}: {double['wall_s']:.1f} s) {steady:.0f} audio-s/s -> {steady / best:.2f}x   goal: >= 0.9x")
    if not same_plan:
        print(f"  (the two long runs were planned differently, so the marginal rate also holds their fixed costs' difference:"
              f"\n   {half['plan']}\n   {double['plan']})")
    if double["calls_rate"]:
        print(f"steady state, from the model actors' calls ({args.scale * args.files} files, {double['actors']} actor(s): "
              f"{double['calls'] - 2 * double['actors']} of {double['calls']} calls, start to start, decoding and commits "
              f"running alongside): {double['calls_rate']:.0f} "
              f"audio-s/s -> {double['calls_rate'] / best:.2f}x   goal: >= 0.9x")
    if double["cpu"]:
        cpu = double["cpu"]
        available = cpu["seconds"] * cpu["cores"]
        print(f"where the CPU went in steady state ({args.scale * args.files} files, {cpu['seconds']:.0f} s between the "
              f"first and last commits, {available:.0f} core-s on {cpu['cores']} cores):")
        for role, used in cpu["core_s"].items():
            print(f"  {used:6.1f} core-s {used / available:6.1%}  {ROLES[role]}")
        idle = available - sum(cpu["core_s"].values())
        print(f"  {idle:6.1f} core-s {idle / available:6.1%}  not used by any thread, of which the kernel counted "
              f"{cpu['idle_s']:.1f} core-s idle and {cpu['steal_s']:.1f} stolen (this VM's CPUs waiting for the host's)")
        if double["calls_rate"]:
            share = cpu["core_s"]["model"] / available
            print(f"  the model threads' share bounds the job at {share:.2f}x; the calls reach {double['calls_rate'] / best:.2f}x, "
                  f"so per core-second the model runs at {double['calls_rate'] / best / share:.2f}x its speed in the "
                  f"reference")
    print(f"where the job's time went: process start -> job start {job['to_job_start_s']:.1f} s, job start -> first commit "
          f"{job['to_first_commit_s']:.1f} s, first -> last commit (steady) {job['steady_s']:.1f} s over {job['commits']} commits, "
          f"last commit -> exit {job['after_last_commit_s']:.1f} s; fixed cost implied by the two runs {fixed:.1f} s")
    print(json.dumps({**job, "cpu_steady": double["cpu"], "half_wall_s": half["wall_s"], "double_wall_s": double["wall_s"], "fixed_s": fixed, "model_best_s": best_s, "model_best_layout": [mb["processes"], mb["threads"], mb["batch"]], "model_best_audio_s_per_s": best, "ratio_with_startup": whole / best,
                      "ratio_steady": steady / best,
                      "ratio_steady_calls": (double["calls_rate"] or 0) / best}))


if __name__ == "__main__":
    main()
