"""One job per OUTPUT: the lease, on a local folder and on moto S3 (conditional puts over HTTP)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.lease import LEASE_FILE, Lease, LeaseHeld
from tests.pipeline.conftest import AUDIO


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out"


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_a_second_run_is_refused_while_the_first_holds_the_lease(output):
    with Lease(output, timeout_s=600) as first:
        with pytest.raises(LeaseHeld, match="being written by another run") as refused:
            Lease(output, timeout_s=600).acquire()
        assert first.owner in str(refused.value)
        assert first.renew() and not first.lost
    again = Lease(output, timeout_s=600).acquire()  # released: free again
    again.release()
    assert again.read() == (None, None)


def test_a_stale_lease_is_taken_over_and_its_holder_learns_it(output):
    clock = Clock()
    stale = Lease(output, timeout_s=60, clock=clock).acquire()
    clock.t += 61  # no heartbeat for longer than the timeout
    fresh = Lease(output, timeout_s=60, clock=clock).acquire()
    assert fresh.taken_over["owner"] == stale.owner
    assert fresh.read()[0]["owner"] == fresh.owner
    assert not stale.renew() and stale.lost  # the old holder cannot write its heartbeat any more
    stale.release()  # does not delete a lease that is not its own
    assert fresh.read()[0]["owner"] == fresh.owner
    fresh.release()


def test_only_one_of_two_contenders_takes_over_a_stale_lease(output):
    clock = Clock()
    Lease(output, timeout_s=60, clock=clock).acquire()
    clock.t += 120
    a, b = Lease(output, timeout_s=60, clock=clock), Lease(output, timeout_s=60, clock=clock)
    a.acquire()
    with pytest.raises(LeaseHeld):
        b.acquire()  # a's fresh heartbeat now holds it
    a.release()


def test_the_cli_refuses_a_second_concurrent_run(output, model_dir, capsys):
    with Lease(output, timeout_s=600) as holder:
        code = main(["transcribe", str(AUDIO), output, "--model", model_dir, "--gpus-per-actor", "0", "--no-progress"])
        assert code == 2
        err = capsys.readouterr().err
        assert "being written by another run" in err and holder.owner in err


def test_unreadable_lease_counts_as_stale_after_the_timeout(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text("{not json")
    lease = Lease(str(out), timeout_s=1).acquire()
    assert json.loads((out / LEASE_FILE).read_text())["owner"] == lease.owner
    lease.release()


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.run([sys.executable, "-c", f"from pipeline.lease import Lease; l = Lease({str(out)!r}).acquire(); print(l.owner)"],
                            capture_output=True, text=True, check=True, cwd=str(Path(__file__).resolve().parents[2]))
    gone = holder.stdout.strip()  # that process exited without releasing
    lease = Lease(str(out), timeout_s=600).acquire()
    assert lease.taken_over["owner"] == gone
    lease.release()
