"""Shared test fixtures: a real S3 API (moto server on 127.0.0.1) and a real local Ray cluster.

Both are session-scoped: starting Ray costs seconds. The S3 fixture sets the usual AWS environment
variables *before* Ray starts so every Ray worker process inherits the endpoint and dummy keys.
"""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on loopback; AWS_* env vars point boto/s3fs at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket; returns its name. Uses s3fs over HTTP like the product does."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """A real local Ray cluster with 4 logical CPUs (more than the 2 cores, so pipelines don't
    starve) and 2 logical GPUs so GPU pinning logic can be exercised."""
    import ray

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    ctx = __import__("ray.data", fromlist=["DataContext"]).DataContext.get_current()
    ctx.execution_options.verbose_progress = False
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
