"""An S3-compatible server on loopback for the tests: moto's ThreadedMotoServer, with a request log.

The log is kept by a WSGI wrapper around the server's app, so tests see what
really went over the wire (method, key, Range header, status) and how many
requests were in flight at once.  ``delay`` slows every request down so that
overlap, when the client sends requests in parallel, is certain rather than
lucky.  ``fault`` lets a test answer chosen requests with an S3 error of its
own making, as a misbehaving S3-compatible server would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

ACCESS_KEY_ID = "AKIDTESTS3BACKEND01"
SECRET_ACCESS_KEY = "test-secret-Zq81vXpL0wMn4"


@dataclass
class Request:
    method: str
    path: str  # /bucket/key
    range: Optional[str]
    status: int = 0


@dataclass
class Recorder:
    """WSGI middleware noting each request; ``delay`` seconds are added to each."""

    app: Callable
    requests: List[Request] = field(default_factory=list)
    delay: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # environ -> (HTTP status, S3 error code, message) to answer with, or None to serve the request
    fault: Optional[Callable[[dict], Optional[Tuple[int, str, str]]]] = None

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("HTTP_RANGE"))
        with self.lock:
            self.requests.append(request)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            answer = self.fault(environ) if self.fault else None
            if answer is not None:
                return _error_response(request, start_response, *answer)

            def noting_start(status: str, headers: list, *args: Any) -> Any:
                request.status = int(status.split()[0])
                return start_response(status, headers, *args)

            return self.app(environ, noting_start)
        finally:
            with self.lock:
                self.in_flight -= 1

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.delay, self.in_flight, self.most_in_flight = 0.0, 0, 0
            self.fault = None

    def gets(self, bucket: str, key_part: str = "") -> List[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(f"/{bucket}/")
                and key_part in r.path]


def _error_response(request: Request, start_response: Callable, status: int, code: str, message: str) -> list:
    from xml.sax.saxutils import escape

    body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message><RequestId>fault</RequestId></Error>").encode()
    request.status = status
    start_response(f"{status} Fault", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


@dataclass
class S3Server:
    url: str
    recorder: Recorder
    auth_keys: Optional[Tuple[str, str]] = None  # valid keys while authentication is enforced

    def client(self, key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> Any:
        import boto3

        if self.auth_keys:
            key_id, secret = self.auth_keys
        return boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                     region_name="us-east-1").client("s3", endpoint_url=self.url)

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> int:
        client = self.client()
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=bucket, Key=prefix + path.relative_to(folder).as_posix(),
                                  Body=path.read_bytes())
                count += 1
        return count

    def keys(self, bucket: str, prefix: str = "") -> List[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    @contextlib.contextmanager
    def enforcing_credentials(self) -> Iterator[Tuple[str, str]]:
        """Make the server check credentials; yields the one valid (key id, secret) pair."""
        import requests

        iam = _iam(self.url)
        user = f"u{uuid.uuid4().hex[:10]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        created = iam.create_access_key(UserName=user)["AccessKey"]
        keys = (created["AccessKeyId"], created["SecretAccessKey"])
        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10)
        self.auth_keys = keys
        try:
            yield keys
        finally:
            self.auth_keys = None
            requests.post(f"{self.url}/moto-api/reset-auth", data=b"inf", timeout=10)


def _iam(url: str) -> Any:
    import boto3

    return boto3.session.Session(aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
                                 region_name="us-east-1").client("iam", endpoint_url=url)


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    recorder = Recorder(server._server.app)  # the threaded WSGI server reads .app per request
    server._server.app = recorder
    try:
        yield S3Server(f"http://{host}:{port}", recorder)
    finally:
        server.stop()


@pytest.fixture()
def s3_server(s3_server_session: S3Server) -> S3Server:
    """The session's server with an empty request log."""
    s3_server_session.recorder.reset()
    return s3_server_session
