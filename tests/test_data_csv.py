"""``type: "csv"`` datasets: image URLs downloaded once from a real HTTP server on loopback."""

from __future__ import annotations

import csv
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError, DataError


class Config:
    train_batch_size = 1
    override_dataset_config = False


class _CountingHandler(SimpleHTTPRequestHandler):
    requests: list

    def do_GET(self):  # noqa: N802 - the http.server name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    requests: list = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _dataset(tmp_path: Path, **keys) -> dict:
    return {"id": "web", "type": "csv", "csv_file": str(tmp_path / "list.csv"),
            "csv_cache_dir": str(tmp_path / "downloads"), "cache_dir_vae": str(tmp_path / "vae"),
            "resolution": 32, "aspect_bucket_alignment": 16, "caption_strategy": "textfile",
            "csv_caption_column": "caption", **keys}


def _prepare(tmp_path: Path, **keys):
    backends = parse_data_backend_config(
        [_dataset(tmp_path, **keys), {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}],
        {})
    return prepare_training_data(Config, backends, show_progress=False)


def test_csv_urls_are_downloaded_once_and_captioned_from_the_column(tmp_path, server):
    served, base, requests = server
    Image.new("RGB", (48, 32), "red").save(served / "red.png")
    Image.new("RGB", (32, 48), "blue").save(served / "blue.jpg", quality=90)
    (served / "photos").mkdir()
    Image.new("RGB", (32, 32), "green").save(served / "photos" / "red.png")  # same name, other folder
    _write_csv(tmp_path / "list.csv", [
        {"url": f"{base}/red.png", "caption": "a red rectangle"},
        {"url": f"{base}/blue.jpg", "caption": "a blue rectangle"},
        {"url": f"{base}/photos/red.png", "caption": "a green square"},
        {"url": f"{base}/missing.png", "caption": "never there"},
    ])

    data = _prepare(tmp_path)
    captions = sorted(s.caption for s in data.samples["web"])
    assert captions == ["a blue rectangle", "a green square", "a red rectangle"]
    assert sorted(requests) == ["/blue.jpg", "/missing.png", "/photos/red.png", "/red.png"]
    downloads = tmp_path / "downloads"
    assert len(list(downloads.glob("*.png"))) + len(list(downloads.glob("*.jpg"))) == 3
    assert not list(downloads.glob("*.partial"))

    requests.clear()
    again = _prepare(tmp_path)
    assert requests == ["/missing.png"], "a downloaded image was fetched again"
    assert sorted(s.caption for s in again.samples["web"]) == captions


def test_a_csv_whose_urls_all_fail_names_the_dataset(tmp_path, server):
    _served, base, _requests = server
    _write_csv(tmp_path / "list.csv", [{"url": f"{base}/gone.png", "caption": "x"}])
    with pytest.raises(DataError, match=r"dataset 'web': none of the 1 URLs .* \(first: .*HTTP 404\)"):
        _prepare(tmp_path)


def test_csv_settings_are_checked_before_anything_downloads(tmp_path):
    _write_csv(tmp_path / "list.csv", [{"link": "http://127.0.0.1:9/a.png", "caption": "x"}])
    with pytest.raises(DataError, match="has no column 'url'"):
        _prepare(tmp_path)
    with pytest.raises(ConfigError, match="'csv_caption_column' .* set 'caption_strategy': 'textfile'"):
        _prepare(tmp_path, caption_strategy="filename", csv_url_column="link")
    with pytest.raises(ConfigError, match="key 'csv_cache_dir' is required with type 'csv'"):
        _prepare(tmp_path, csv_cache_dir=None)
