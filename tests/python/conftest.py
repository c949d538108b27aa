"""Fixtures: a real `hydrant server` process on loopback, boto3 clients pointed at it, and a
helper to run a real `hydrant agent`."""

import os
import pathlib
import socket
import subprocess
import time

import boto3
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 30
AGENT_TIMEOUT_S = 180


def hydrant_bin():
    path = os.environ.get("HYDRANT_BIN") or str(ROOT / "target" / "debug" / "hydrant")
    if not os.path.exists(path):
        pytest.fail(f"hydrant binary not found at {path}: build it (make test does) or set HYDRANT_BIN")
    return path


def assets_dir():
    for d in (os.environ.get("HYDRANT_ASSETS"), ROOT.parent / "shared" / "assets", ROOT / ".assets"):
        if d and (pathlib.Path(d) / "videos").is_dir():
            return pathlib.Path(d)
    pytest.fail("test assets not found: run `make test` (it fetches them) or set HYDRANT_ASSETS")


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base, extra_args=()):
        self.base = base
        self.data = base / "data"
        self.http = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        self.quic = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        self.endpoint = f"http://{self.http}"
        self.ca = self.data / "tls" / "ca.pem"
        self.log = open(base / "server.log", "wb")
        self.proc = subprocess.Popen(
            [hydrant_bin(), "server", "--data-dir", str(self.data), "--http", self.http, "--quic", self.quic, *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        host, port = self.http.split(":")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited at start: {(base / 'server.log').read_text()}")
            if self.ca.exists():
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        pytest.fail("server did not start listening")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def client(self, service):
        from botocore.config import Config

        # The server throttles like AWS (5 GetRecords/s per shard): clients back off and retry
        # throttled calls as real consumers do.
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            config=Config(retries={"mode": "standard", "max_attempts": 10}),
        )

    def run_agent(self, stream, source, spool, fast=True):
        cmd = [hydrant_bin(), "agent", "--server", self.quic, "--ca", str(self.ca),
               "--stream", stream, "--source", source, "--spool-dir", str(spool)]
        if fast:
            cmd.append("--fast")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=AGENT_TIMEOUT_S)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"), extra_args=["--open"])
    yield s
    s.stop()


@pytest.fixture(scope="session")
def kvs(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="session")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="session")
def assets():
    return assets_dir()


# Keys of the `signed_server`: one for every stream, one restricted to a single stream.
SIGNED_KEY_ID = "AKIDHYDRANTTEST"
SIGNED_SECRET = "hydrant/test+Secret0123456789abcdefghij"
LIMITED_KEY_ID = "AKIDHYDRANTLIMITED"
LIMITED_SECRET = "limited/Secret0123456789abcdefghijklmn"
LIMITED_STREAM = "limited-a"

SIGNED_CONFIG = f"""
region = "us-east-1"

[auth]
open = false

[[auth.keys]]
access_key_id = "{SIGNED_KEY_ID}"
secret_access_key = "{SIGNED_SECRET}"

[[auth.keys]]
access_key_id = "{LIMITED_KEY_ID}"
secret_access_key = "{LIMITED_SECRET}"
streams = ["{LIMITED_STREAM}"]
"""


class SignedServer(Server):
    """A server that verifies SigV4 against the keys above (no `--open`)."""

    def client_with(self, service, key_id, secret):
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}),
        )

    def client(self, service):
        return self.client_with(service, SIGNED_KEY_ID, SIGNED_SECRET)


@pytest.fixture(scope="session")
def signed_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("signed-server")
    config = base / "server.toml"
    config.write_text(SIGNED_CONFIG)
    s = SignedServer(base, extra_args=["--config", str(config)])
    yield s
    s.stop()
