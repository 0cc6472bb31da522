"""The CLI re-executes itself on tcmalloc when the system has it (jobs/allocator.py)."""
import json
import os
import subprocess
import sys

import pytest

from jobs.allocator import DONE, ENV, find_tcmalloc, preload_env


def test_preload_env_rules(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    dirs = [str(tmp_path / "nothing-here"), str(tmp_path)]
    env = preload_env({"LD_PRELOAD": "/x/libfoo.so", "PATH": "/bin"}, dirs)
    assert env["LD_PRELOAD"] == f"{lib} /x/libfoo.so" and env[DONE] == "1" and env["PATH"] == "/bin"
    assert preload_env({}, [str(tmp_path / "nothing-here")]) is None  # not installed: run as is
    assert preload_env({ENV: "system"}, dirs) is None
    assert preload_env({DONE: "1"}, dirs) is None  # the re-executed process does not loop
    assert preload_env({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, dirs) is None  # the user chose one
    assert preload_env({ENV: str(lib)}, [])["LD_PRELOAD"] == str(lib)
    with pytest.raises(SystemExit, match=ENV):
        preload_env({ENV: str(tmp_path / "missing.so")}, dirs)


def _bench_allocator(tmp_path, **env):
    out = tmp_path / f"bench-{len(env)}.json"
    script = os.path.join(os.path.dirname(sys.executable), "parakeet-ray")
    cmd = [script, "bench", "--preset", "tiny", "--batch-sizes", "1", "--seconds", "1", "--repeats", "1", "--json", str(out)]
    clean = {k: v for k, v in os.environ.items() if k not in (DONE, ENV, "LD_PRELOAD")}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**clean, **env}, timeout=300)
    return json.loads(out.read_text())["allocator"]


def test_cli_runs_on_tcmalloc_unless_told_not_to(tmp_path):
    if find_tcmalloc() is None:
        pytest.skip("libtcmalloc-minimal4 is not installed (.ci/run installs it)")
    assert _bench_allocator(tmp_path) == "tcmalloc"
    assert _bench_allocator(tmp_path, **{ENV: "system"}) == "glibc"
