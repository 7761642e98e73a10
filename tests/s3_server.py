"""A real S3 endpoint for tests: moto's server in a subprocess on a free loopback port.

`moto_s3_server` (session): the server; `s3_store_url` (per test): AWS_* variables pointing at it,
a fresh bucket, and `s3://<bucket>/store`. Registered in tests/conftest.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"
STARTUP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class MotoS3Server:
    """`python -m moto.server` bound to 127.0.0.1; `start()` waits until it answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint_url = f"http://{HOST}:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoS3Server:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} within {STARTUP_SECONDS} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def environment(self) -> dict[str, str]:
        """What s3fs/botocore read: dummy credentials, the endpoint, a region."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[MotoS3Server]:
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = MotoS3Server(free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store_url(moto_s3_server: MotoS3Server, monkeypatch, tmp_path) -> str:
    """`s3://<fresh bucket>/store` on the moto server, with AWS_* set and this test's own cache dir."""
    for name, value in moto_s3_server.environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "LMFORGE_STORE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"lmforge-{uuid.uuid4().hex[:12]}"
    moto_s3_server.create_bucket(bucket)
    return f"s3://{bucket}/store"
