"""A real two-node local Ray cluster (`ray start --head` + `ray start --address`, distinct resources),
and the transcribe job submitted to it with `ray job submit --working-dir .` as infra/README.md shows."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
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


@pytest.mark.slow
def test_ray_job_submit_transcribe_on_two_nodes(cluster, tmp_path):
    address, env = cluster
    audio = tmp_path / "audio"
    audio.mkdir()
    clips = [p for p in (DATA / "audio").iterdir() if p.suffix == ".wav"][:4]
    for p in clips:
        shutil.copy(p, audio / p.name)
    out = tmp_path / "out"
    runtime_env = {"excludes": ["tests/", ".git/", "examples/"], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    # both nodes joined, each with its own custom resource
    check = subprocess.run(["ray", "job", "submit", "--address", address, "--", "python", "-c",
                            "import ray, json; ray.init(); r = ray.cluster_resources(); "
                            "print('RESOURCES', json.dumps({k: r.get(k) for k in ('head', 'worker', 'CPU')}))"],
                           env=env, capture_output=True, text=True, timeout=300)
    line = next(l for l in check.stdout.splitlines() if l.startswith("RESOURCES"))
    assert json.loads(line.split(" ", 1)[1]) == {"head": 1.0, "worker": 1.0, "CPU": 4.0}
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env),
         "--", "python", "-m", "jobs.cli", "transcribe", str(audio), str(out), "--model", str(DATA / "nemo" / "tiny_tdt.nemo"),
         "--address", "auto", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr)
    table = pq.read_table(sorted((out / "transcripts").glob("*.parquet")))
    assert sorted(Path(u).name for u in table.column("audio_uri").to_pylist()) == sorted(p.name for p in clips)
    assert all(table.column("error").is_null().to_pylist())
    assert json.loads((out / "_summary.json").read_text())["files"] == len(clips)
