"""A real two-node local Ray cluster (`ray start --head` + `ray start --address`, distinct resources,
Ray 2.60 token authentication), and the transcribe job submitted to it with `ray job submit`, the
working_dir and infra/runtime_env.yaml as infra/README.md shows; the Parquet is read back."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def _ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _node_args(temp_dir, ports):
    agent, grpc, metrics, runtime_env = ports
    return ["--temp-dir", temp_dir, "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env)]


def _stop(temp_dir):
    """Stop only this test's cluster: every process whose command line names its temp dir (workers die with their raylet)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmd and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture()
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    gcs, dashboard, *rest = _ports(10)
    # The cluster's own token in a file of its own (not the user's ~/.ray/auth_token): every `ray` command
    # below finds it through RAY_AUTH_TOKEN_PATH, as infra/README.md documents.
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    try:
        subprocess.run(["ray", "start", "--head", "--port", str(gcs), "--dashboard-port", str(dashboard),
                        "--include-dashboard=true", "--num-cpus", "2", "--resources", json.dumps({"head": 1}),
                        *_node_args(temp_dir, rest[:4])], check=True, env=env, capture_output=True, timeout=120)
        subprocess.run(["ray", "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "2",
                        "--resources", json.dumps({"worker": 1}), *_node_args(temp_dir, rest[4:8])],
                       check=True, env=env, capture_output=True, timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(address, env, *entrypoint, runtime_env=None, timeout=300):
    extra = ["--working-dir", str(ROOT), "--runtime-env", str(runtime_env)] if runtime_env else []
    return subprocess.run(["ray", "job", "submit", "--address", address, *extra, "--", *entrypoint],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _documented_runtime_env(tmp_path):
    """infra/runtime_env.yaml as shipped, minus its pip list (this machine has the packages; no downloads in tests)."""
    env = yaml.safe_load((ROOT / "infra" / "runtime_env.yaml").read_text())
    assert env.pop("pip")
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


@pytest.mark.slow
def test_ray_job_submit_transcribe_on_two_nodes(cluster, tmp_path):
    address, env = cluster
    # token auth is really on: a client holding a different token is turned away
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    denied = _submit(address, {**env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, "python", "-c", "print('ran')", timeout=120)
    assert denied.returncode != 0 and "Invalid authentication token" in denied.stderr, denied.stderr[-2000:]

    # both nodes joined, each with its own custom resource
    check = _submit(address, env, "python", "-c", "import ray, json; ray.init(); r = ray.cluster_resources(); "
                    "print('RESOURCES', json.dumps({k: r.get(k) for k in ('head', 'worker', 'CPU')}))")
    line = next(l for l in check.stdout.splitlines() if l.startswith("RESOURCES"))
    assert json.loads(line.split(" ", 1)[1]) == {"head": 1.0, "worker": 1.0, "CPU": 4.0}

    audio = tmp_path / "audio"
    audio.mkdir()
    clips = sorted(p for p in (DATA / "audio").iterdir() if p.suffix == ".wav")[:4]
    for p in clips:
        shutil.copy(p, audio / p.name)
    out = tmp_path / "out"
    model_path = DATA / "nemo" / "tiny_tdt.nemo"
    command = ("python", "-m", "jobs.cli", "transcribe", str(audio), str(out), "--model", str(model_path),
               "--address", "auto", "--no-progress")
    runtime_env = _documented_runtime_env(tmp_path)
    proc = _submit(address, env, *command, runtime_env=runtime_env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr)
    table = pq.read_table(sorted((out / "transcripts").glob("*.parquet")))
    assert sorted(Path(u).name for u in table.column("audio_uri").to_pylist()) == sorted(p.name for p in clips)
    assert all(table.column("error").is_null().to_pylist())
    assert json.loads((out / "_summary.json").read_text())["files"] == len(clips)

    # the job's texts are the model's own on the same files
    import model

    m = model.load(str(model_path))
    expected = {p.name: t.text for p, t in zip(clips, m.transcribe([str(p) for p in clips]))}
    got = {Path(u).name: text for u, text in zip(table.column("audio_uri").to_pylist(), table.column("text").to_pylist())}
    assert got == expected

    # resume = rerun the same submission: nothing is transcribed twice, nothing goes missing
    again = _submit(address, env, *command, runtime_env=runtime_env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rerun = pq.read_table(sorted((out / "transcripts").glob("*.parquet")))
    assert sorted(rerun.column("audio_uri").to_pylist()) == sorted(table.column("audio_uri").to_pylist())


@pytest.mark.slow
def test_finetune_on_two_nodes_with_checkpoints_on_s3(s3_bucket, cluster, tmp_path):
    """One Ray Train worker per node (STRICT_SPREAD), audio and manifest read from moto S3, checkpoints and
    metrics written there; every rank's part of a checkpoint lands in the same S3 folder."""
    import s3fs

    address, env = cluster
    fs = s3fs.S3FileSystem()
    rows = [json.loads(line) for line in (DATA / "audio" / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        fs.put(str(DATA / "audio" / r["audio"]), f"{s3_bucket}/audio/{r['audio']}")
    with fs.open(f"{s3_bucket}/train.jsonl", "w") as f:
        f.write("".join(json.dumps({"audio_uri": f"audio/{r['audio']}", "text": r["text"]}) + "\n" for r in rows))
    out = f"s3://{s3_bucket}/ft"
    command = ("python", "-m", "jobs.cli", "finetune", "--model", str(DATA / "nemo" / "tiny_tdt.nemo"),
               "--train", f"s3://{s3_bucket}/train.jsonl", "--output", out, "--address", "auto", "--workers", "2",
               "--placement-strategy", "STRICT_SPREAD", "--max-steps", "3", "--checkpoint-every", "1", "--batch-seconds", "4",
               "--buffer-batches", "2", "--no-spec-augment", "--lr", "1e-5", "--warmup-steps", "1")
    proc = _submit(address, env, *command, runtime_env=_documented_runtime_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(line) for line in fs.cat(f"{s3_bucket}/ft/metrics.jsonl").decode().splitlines()]
    assert metrics[-1]["step"] == 3 and metrics[-1]["workers"] == 2 and metrics[-1]["nodes"] == 2
    checkpoints = sorted(p for p in fs.ls(f"{s3_bucket}/ft/_ray/finetune") if p.rsplit("/", 1)[1].startswith("epoch-"))
    assert len(checkpoints) == 2  # --keep-checkpoints 2
    names = {p.rsplit("/", 1)[1] for p in fs.ls(checkpoints[-1])}
    assert {"rank-0.pt", "rank-1.pt", "config.json", "model.safetensors", "trainer_state.pt"} <= names
    import model

    assert model.load(f"{out}/last").config.vocab_size > 0
