"""An S3-compatible server on 127.0.0.1 for the tests: moto's server mode, the real S3 HTTP API.

`S3Server.uri(bucket, prefix)` gives the URI llmft and Ray Train take
(`s3://bucket/prefix?endpoint_override=http://127.0.0.1:PORT`), and `env` the variables a client
needs (test credentials that moto accepts; never real ones). Each test makes its own bucket.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "llmft-test-key", "AWS_SECRET_ACCESS_KEY": "llmft-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    endpoint: str
    server: object

    @property
    def env(self) -> dict[str, str]:
        return dict(TEST_CREDENTIALS)

    def uri(self, bucket: str, prefix: str = "") -> str:
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                 secret_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                                 allow_bucket_creation=True)

    def new_bucket(self, name: str = "llmft") -> str:
        """A fresh, empty bucket; returns its name."""
        bucket = f"{name}-{uuid.uuid4().hex[:8]}"
        self.filesystem().create_dir(bucket)
        return bucket

    def keys(self, bucket: str) -> list[str]:
        """Every object key in `bucket`."""
        import pyarrow.fs as pafs

        infos = self.filesystem().get_file_info(pafs.FileSelector(bucket, recursive=True))
        return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File)


def start_s3_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(endpoint=f"http://{host}:{port}", server=server)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server for the session, with test credentials in this process's environment."""
    saved = {name: os.environ.get(name) for name in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    server = start_s3_server()
    yield server
    server.server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
