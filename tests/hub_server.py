"""A Hugging Face Hub on loopback: the part of its HTTP API that ``huggingface_hub`` uses to upload.

No package serves the Hub's upload API, so this implements, from what
``huggingface_hub`` (2.x) sends:

* ``GET /api/whoami-v2`` (the token check),
* ``POST /api/repos/create`` (409 when it exists, which ``exist_ok`` accepts),
* ``POST /api/validate-yaml`` (the README's metadata, parsed as YAML),
* ``POST /api/models/{repo}/preupload/{revision}`` (regular or LFS, per file),
* ``POST /{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs/{oid}`` (basic
  LFS transfer: the body must hash to the oid),
* ``POST /api/models/{repo}/commit/{revision}`` (NDJSON: header, ``file`` with
  base64 content, ``lfsFile`` naming an uploaded oid),
* ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` (what ``hf_hub_download``
  reads, so a model card's snippet can load what was pushed).

Every request is recorded (method, path, headers, body) so tests can look for
the token anywhere but the Authorization header.  ``fault`` answers chosen
requests with an error status; ``stop()`` makes the Hub unreachable.

``huggingface_hub`` uploads through Xet when ``hf_xet`` is installed; Xet's
content-addressed storage protocol is not served here, so tests set
``HF_HUB_DISABLE_XET`` and the client takes the LFS path the real Hub also serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".bin", ".pt")
USER = "tester"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict  # names in lower case
    body: bytes
    status: int = 0


@dataclass
class Commit:
    repo: str
    revision: str
    message: str
    paths: list
    time: float  # when it landed (time.time())


@dataclass
class HubState:
    tokens: set
    repos: dict = field(default_factory=dict)  # repo id -> {path: bytes}
    lfs: dict = field(default_factory=dict)  # sha256 hex -> bytes
    commits: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    # (method, path) -> HTTP status to answer with instead, or None to serve
    fault: Optional[Callable[[str, str], Optional[int]]] = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set = field(default_factory=set)  # open client sockets, closed by stop()


class FakeHub:
    def __init__(self, token: str) -> None:
        self.state = HubState(tokens={token})
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Unreachable from now on: no listener, and kept-alive connections are cut."""
        self.server.shutdown()
        self.server.server_close()
        with self.state.lock:
            for connection in list(self.state.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def files(self, repo: str) -> dict:
        return dict(self.state.repos.get(repo, {}))


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with self.state.lock:
            self.state.requests.append(record)
        status = self.state.fault(self.command, self.path) if self.state.fault else None
        if status is not None:
            return self._reply(record, status, {"error": "injected failure"})
        download = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        if download and self.command in ("GET", "HEAD"):
            return self._download(record, download.group(1), download.group(3))
        try:
            status, payload = self._route(body)
        except Exception as error:  # a malformed request: the client is wrong, say why
            status, payload = 400, {"error": f"{type(error).__name__}: {error}"}
        self._reply(record, status, payload)

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def _reply(self, record: Recorded, status: int, payload: object) -> None:
        record.status = status
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _handle

    def _download(self, record: Recorded, repo: str, path: str) -> None:
        """What hf_hub_download reads: a HEAD for the metadata, then the bytes."""
        content = self.state.repos.get(repo, {}).get(path)
        if content is None:
            return self._reply(record, 404, {"error": "Entry not found"})
        record.status = 200
        self.send_response(200)
        self.send_header("X-Repo-Commit", hashlib.sha1(repo.encode()).hexdigest())
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(content)

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        super().finish()
        with self.state.lock:
            self.state.connections.discard(self.connection)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer "):] in self.state.tokens

    # -- the API ---------------------------------------------------------------------
    def _route(self, body: bytes) -> tuple[int, object]:
        path = self.path.split("?")[0]
        if path.startswith("/lfs/") and self.command == "PUT":
            return self._lfs_put(path[len("/lfs/"):], body)
        if not self._authorised():
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/whoami-v2":
            return 200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}}
        if path == "/api/repos/create":
            return self._create(json.loads(body))
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        match = re.fullmatch(r"/api/models/(.+?/.+?)/(preupload|commit)/(.+)", path)
        if match and match.group(2) == "preupload":
            return self._preupload(match.group(1), json.loads(body))
        if match:
            return self._commit(match.group(1), match.group(3), body)
        match = re.fullmatch(r"/(.+?/.+?)\.git/info/lfs/objects/batch", path)
        if match:
            return self._lfs_batch(match.group(1), json.loads(body))
        return 404, {"error": f"no route for {self.command} {path}"}

    def _create(self, payload: dict) -> tuple[int, object]:
        repo = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo}"
        with self.state.lock:
            if repo in self.state.repos:
                return 409, {"error": "You already created this model repo", "url": url}
            self.state.repos[repo] = {}
        return 200, {"url": url, "name": repo}

    def _validate_yaml(self, payload: dict) -> tuple[int, object]:
        content = payload["content"]
        if content.startswith("---"):
            front = content.split("---", 2)[1]
            try:
                data = yaml.safe_load(front)
            except yaml.YAMLError as error:
                return 400, {"errors": [{"message": str(error)}]}
            if not isinstance(data, dict):
                return 400, {"errors": [{"message": "metadata is not a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, repo: str, payload: dict) -> tuple[int, object]:
        if repo not in self.state.repos:
            return 404, {"error": "Repository not found"}
        files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                  "shouldIgnore": False, "oid": None} for f in payload["files"]]
        return 200, {"files": files}

    def _lfs_batch(self, repo: str, payload: dict) -> tuple[int, object]:
        if repo not in self.state.repos:
            return 404, {"message": "Repository not found"}
        host = f"http://{self.headers['Host']}"
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.state.lfs:  # already stored: nothing to upload
                entry["actions"] = {"upload": {"href": f"{host}/lfs/{item['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, object]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        with self.state.lock:
            self.state.lfs[oid] = body
        return 200, {}

    def _commit(self, repo: str, revision: str, body: bytes) -> tuple[int, object]:
        if repo not in self.state.repos:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]
        assert header["key"] == "header", "the first NDJSON line must be the header"
        added = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                added[value["path"]] = self.state.lfs[value["oid"]]
            else:
                return 400, {"error": f"unsupported operation {line['key']}"}
        with self.state.lock:
            self.state.repos[repo].update(added)
            self.state.commits.append(Commit(repo, revision, header["value"]["summary"], sorted(added),
                                             time.time()))
            oid = hashlib.sha1(f"{repo}{len(self.state.commits)}".encode()).hexdigest()
        host = f"http://{self.headers['Host']}"
        return 200, {"commitUrl": f"{host}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
