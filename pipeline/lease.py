"""One job per OUTPUT: a lease object, OUTPUT/_lease.json, holding its owner and a heartbeat.

Acquiring is an atomic create: `O_CREAT | O_EXCL` on a local filesystem, a conditional put
(`If-None-Match: *`) on S3. A second concurrent run finds the lease held and is refused, naming the
owner and how fresh its heartbeat is. A lease whose heartbeat is older than `timeout_s` (a driver
killed without a chance to release it) is taken over, and so is one whose owner ran on this host as a
process that no longer exists (a driver killed a minute ago need not be waited for); atomically too: on S3 by a put conditional on
the stale lease's ETag (`If-Match`), locally by renaming the stale file away (only one renamer can
succeed) and creating a new one. While the job runs, a thread renews the heartbeat every
`timeout_s / 4` (at most 60 s), with the same conditions; if another run has taken the lease over,
the renewal fails and `lost` is set, and the job stops. Filesystems with neither primitive (other
fsspec backends) fall back to check-then-write, which narrows the race rather than closing it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .sources import filesystem

LEASE_FILE = "_lease.json"
DEFAULT_LEASE_TIMEOUT_S = 600.0  # 10 min without a heartbeat: the holder is gone


class LeaseHeld(RuntimeError):
    """Another run holds OUTPUT's lease."""


def _now() -> float:
    return time.time()


def _owner_is_gone(owner: str) -> bool:
    """True when `owner` (host:pid:nonce) names a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class Lease:
    """`with Lease(output_uri, ...) as lease:` holds OUTPUT for this run; `lease.lost` turns True if
    another run took it over (after this one missed heartbeats for `timeout_s`)."""

    def __init__(self, output_uri: str, storage_options: dict[str, Any] | None = None,
                 timeout_s: float = DEFAULT_LEASE_TIMEOUT_S, clock=_now):
        if timeout_s <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout_s}")
        self.fs, root = filesystem(output_uri, storage_options)
        self.path = root.rstrip("/") + "/" + LEASE_FILE
        self.output_uri, self.timeout_s, self.clock = output_uri, float(timeout_s), clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = datetime.now(timezone.utc).isoformat()
        self.lost = False
        self.taken_over: dict | None = None  # the stale lease this run replaced, if any
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.kind = "local" if protocol in ("file", "local") else "s3" if protocol in ("s3", "s3a") else "other"

    # ---- the record ---------------------------------------------------------------------------
    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "heartbeat": self.clock(), "started": self.started,
                           "output": self.output_uri, "timeout_s": self.timeout_s}).encode()

    def read(self) -> tuple[dict | None, str | None]:
        """(the current lease, its ETag on S3) or (None, None) if there is none."""
        try:
            if self.kind == "s3":
                self.fs.invalidate_cache(self.path)
                info = self.fs.info(self.path)
                data = self.fs.cat_file(self.path)
                return json.loads(data), info.get("ETag")
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read()), None
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:
            return {"owner": "unknown (unreadable lease)", "heartbeat": 0.0}, None

    # ---- acquire / renew / release ------------------------------------------------------------
    def acquire(self) -> "Lease":
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(3):  # create; or take over a stale lease; a lost race is retried once
            if self._create():
                return self
            current, etag = self.read()
            if current is None:
                continue  # released meanwhile
            age = self.clock() - float(current.get("heartbeat", 0.0))
            if age < self.timeout_s and not _owner_is_gone(str(current.get("owner", ""))):
                raise LeaseHeld(
                    f"{self.output_uri} is being written by another run ({current.get('owner')}, heartbeat "
                    f"{age:.0f} s ago, started {current.get('started')}); one job per OUTPUT. If that run is "
                    f"gone, its lease expires {self.timeout_s - age:.0f} s from now (--lease-timeout)")
            if self._take_over(etag):
                self.taken_over = current
                return self
        raise LeaseHeld(f"{self.output_uri}: could not acquire the lease (another run keeps taking it)")

    def _create(self) -> bool:
        data = self._record()
        if self.kind == "local":
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.kind == "s3":
            try:
                out = self.fs.pipe_file(self.path, data, mode="create")
            except (FileExistsError, OSError, PermissionError) as e:
                if self.fs.exists(self.path):
                    return False
                raise OSError(f"{self.output_uri}: cannot create the lease ({e})") from e
            self._etag = (out or {}).get("ETag") if isinstance(out, dict) else None
            return True
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def _take_over(self, etag: str | None) -> bool:
        data = self._record()
        if self.kind == "local":
            aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path, aside)  # only one contender can move the stale lease away
            except FileNotFoundError:
                return self._create()
            os.unlink(aside)
            return self._create()
        if self.kind == "s3" and etag:
            try:
                out = self.fs.pipe_file(self.path, data, IfMatch=etag)
            except (OSError, PermissionError):
                return False  # someone else renewed or took it first
            self._etag = out.get("ETag") if isinstance(out, dict) else None
            return True
        self.fs.pipe_file(self.path, data)
        return True

    def renew(self) -> bool:
        """Write a fresh heartbeat if the lease is still ours; False (and `lost`) if it is not."""
        current, etag = self.read()
        if current is None or current.get("owner") != self.owner:
            self.lost = True
            return False
        data = self._record()
        try:
            if self.kind == "local":
                tmp = f"{self.path}.{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            elif self.kind == "s3":
                out = self.fs.pipe_file(self.path, data, IfMatch=etag)
                self._etag = out.get("ETag") if isinstance(out, dict) else None
            else:
                self.fs.pipe_file(self.path, data)
        except (OSError, PermissionError):
            self.lost = True
            return False
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current, _ = self.read()
        if current is not None and current.get("owner") == self.owner:
            self.fs.rm(self.path)

    def _heartbeat(self) -> None:
        interval = min(60.0, self.timeout_s / 4)
        while not self._stop.wait(interval):
            if not self.renew():
                return

    def __enter__(self) -> "Lease":
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="parakeet-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
