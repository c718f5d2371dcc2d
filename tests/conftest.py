"""Shared fixtures: media stores on both backends, an S3 server (moto, server mode) on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from influencer_pipeline.media import LocalMediaStore, MediaStore, S3MediaStore
from tests.support.services import free_port, require_service, service_missing  # noqa: F401 - also imported from here
from tests.tiny_models import build_tiny_blip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """One torch/OpenMP thread per xdist worker: `make test` runs one worker per core, and two threads each would
    fight over the cores (OpenMP threads spin while they wait, which is worst on a machine busy with other work).
    Set after collection, since importing tests/diffusion sets two threads for a test run on its own; the variable
    reaches the run workers and servers that tests start."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol HTTP server on loopback, shared by the session; tests isolate by bucket."""
    os.environ.update(S3_CREDENTIALS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> tuple[object, str]:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"media-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> MediaStore:
    """The same tests run against both backends: the interface is the contract."""
    if request.param == "local":
        return LocalMediaStore(tmp_path / "media")
    client, bucket = request.getfixturevalue("s3_bucket")
    return S3MediaStore(client, bucket, prefix="studio")


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Also pins torch to one thread: tiny models gain nothing from more, and lose a lot on a busy CI box."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))
