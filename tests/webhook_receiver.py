"""An HTTP endpoint on loopback that records what webhooks post (JSON or Discord's multipart)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


@dataclass
class Post:
    path: str
    content_type: str
    body: bytes
    json: Optional[dict] = None  # the JSON body, or Discord's payload_json
    files: dict = field(default_factory=dict)  # multipart file name -> bytes


class WebhookReceiver:
    def __init__(self, status: int = 204, on_json: Optional[Callable[[dict], None]] = None) -> None:
        """``on_json(body)`` runs before the reply, while the poster still waits for it."""
        self.posts: list[Post] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                post = _parse(self.path, self.headers.get("Content-Type", ""), body)
                receiver.posts.append(post)
                if on_json is not None and post.json is not None:
                    on_json(post.json)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def on(self, path_prefix: str) -> list[Post]:
        return [p for p in self.posts if p.path.startswith(path_prefix)]


def _parse(path: str, content_type: str, body: bytes) -> Post:
    post = Post(path, content_type, body)
    if content_type.startswith("application/json"):
        post.json = json.loads(body)
    elif content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
            if filename:
                post.files[filename] = payload
            elif name == "payload_json":
                post.json = json.loads(payload)
    return post
