"""The ``aws`` dataset type against a real S3-compatible server on loopback (moto).

Images and captions are uploaded to a bucket, then discovered (ranged reads,
in parallel), trained on, and cached either in the bucket or locally.  Bad
settings must end in one line naming the dataset and the key, and the
credentials must never show up in logs, files or messages.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from PIL import Image

from family_harness import train_in_process, write_two_class_project
from s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, s3_server, s3_server_session  # noqa: F401
from simpletuner.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials come only from what a test gives; never from this machine's AWS set-up."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _aws(server: S3Server, bucket: str, **extra: Any) -> Dict[str, Any]:
    keys = {"type": "aws", "aws_bucket_name": bucket, "aws_endpoint_url": server.url, "aws_region_name": "us-east-1",
            "aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}
    keys.update(extra)
    return {k: v for k, v in keys.items() if v is not None}


def _image_entry(server: S3Server, bucket: str, cache: str, **extra: Any) -> Dict[str, Any]:
    entry = {"id": "pics", **_aws(server, bucket, aws_data_prefix="data/"), "cache_dir_vae": cache,
             "caption_strategy": "textfile", "resolution": 64, "resolution_type": "pixel",
             "aspect_bucket_alignment": 16}
    entry.update(extra)
    return {k: v for k, v in entry.items() if v is not None}  # None: leave the key out


def _parse(entries: list) -> Any:
    from simpletuner.data.schema import parse_data_backend_config

    return parse_data_backend_config(entries, {})


def _text(tmp_path: Path) -> Dict[str, Any]:
    return {"id": "text", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "text")}


def _two_class_bucket(server: S3Server, root: Path) -> str:
    """The two-class project's images and captions, uploaded under data/; the local copy is removed."""
    write_two_class_project(root, per_class=4)
    for caption in (root / "data").glob("*.txt"):
        caption.write_text(f"a {caption.read_text()} square", encoding="utf-8")
    bucket = server.new_bucket()
    server.upload_folder(root / "data", bucket, "data/")
    shutil.rmtree(root / "data")  # nothing may be read from a local copy
    return bucket


def _write_mdb(root: Path, entries: list) -> None:
    (root / "mdb.json").write_text(json.dumps(entries), encoding="utf-8")


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def _assert_no_credentials(text: str) -> None:
    assert SECRET_ACCESS_KEY not in text and ACCESS_KEY_ID not in text


def _files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ discovery


def _noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def test_discovery_reads_only_the_first_bytes_of_each_object_in_parallel(s3_server: S3Server, tmp_path: Path) -> None:
    from simpletuner.data.discovery import discover

    bucket = s3_server.new_bucket()
    client = s3_server.client()
    expected = {}
    total_bytes = 0
    for index in range(16):
        width, height = 320 + 8 * index, 240
        buffer = io.BytesIO()
        if index % 2:
            _noise(width, height, index).save(buffer, "PNG")
            name = f"shots/img_{index:02d}.png"
        else:
            exif = Image.Exif()
            exif[0x0112] = 6 if index == 0 else 1  # rotated 90 degrees: seen upright it is taller than wide
            _noise(width, height, index).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
            name = f"shots/img_{index:02d}.jpg"
            if index == 0:
                width, height = height, width
        data = buffer.getvalue()
        assert len(data) > 64 * 1024, "each image must be larger than one ranged read"
        total_bytes += len(data)
        client.put_object(Bucket=bucket, Key=f"data/{name}", Body=data)
        client.put_object(Bucket=bucket, Key=f"data/{name.rsplit('.', 1)[0]}.txt", Body=f"caption {index}".encode())
        expected[name] = (width, height, f"caption {index}")
    client.put_object(Bucket=bucket, Key="data/.thumbs/x.png", Body=b"hidden folder")
    client.put_object(Bucket=bucket, Key="data/notes.md", Body=b"not an image")
    client.put_object(Bucket=bucket, Key="elsewhere/outside.png", Body=b"outside the prefix")
    dataset = _parse([_image_entry(s3_server, bucket, f"s3://{bucket}/data/cache"), _text(tmp_path)]).image_datasets[0]
    # Cache entries written inside the data prefix are never taken for images.
    client.put_object(Bucket=bucket, Key="data/cache/latents/ab/stray.png", Body=b"x")

    s3_server.recorder.delay = 0.03  # each request takes a while, so parallel requests overlap for sure
    found = discover(dataset, progress=False)

    assert {r.relative_path: (r.width, r.height, r.caption) for r in found.records} == expected
    assert found.header_reads == 16 and found.hidden_folders == [".thumbs/"]
    image_gets = [r for r in s3_server.recorder.gets(bucket, "/data/shots/") if not r.path.endswith(".txt")]
    assert image_gets and all(r.range and r.status == 206 for r in image_gets), "whole images were downloaded"
    spans = [r.range.partition("=")[2].split("-") for r in image_gets]
    assert sum(int(end) - int(start) + 1 for start, end in spans) < total_bytes / 2
    assert s3_server.recorder.most_in_flight >= 4, "headers were not read in parallel"
    assert "data/cache/discovery.json" in s3_server.keys(bucket, "data/cache/")

    s3_server.recorder.reset()
    again = discover(dataset, progress=False)
    assert again.header_reads == 0 and len(again.records) == 16
    assert not [r for r in s3_server.recorder.gets(bucket, "/data/shots/") if not r.path.endswith(".txt")]

    def listings() -> int:
        return sum(r.method == "GET" and r.path.rstrip("/") == f"/{bucket}" for r in s3_server.recorder.requests)

    assert listings() == 1
    trusted = discover(replace(dataset, preserve_data_backend_cache=True), progress=False)
    assert [r.relative_path for r in trusted.records] == [r.relative_path for r in found.records]
    assert listings() == 1, "preserve_data_backend_cache must not list the bucket"
    assert trusted.records[0].storage is not None and trusted.records[0].path == "data/shots/img_00.jpg"


def test_broken_objects_are_skipped_with_their_reason(s3_server: S3Server, tmp_path: Path) -> None:
    from simpletuner.data.discovery import discover

    bucket = s3_server.new_bucket()
    good = io.BytesIO()
    _noise(64, 48, 1).save(good, "PNG")
    truncated = good.getvalue()[: len(good.getvalue()) - 40]
    for key, body in (("data/good.png", good.getvalue()), ("data/cut.png", truncated), ("data/empty.jpg", b""),
                      ("data/fake.png", b"plain text, not an image at all"), ("data/good.txt", b""),
                      ("data/cut.txt", b"cut"), ("data/fake.txt", b"fake")):
        s3_server.write(bucket, key, body)
    dataset = _parse([_image_entry(s3_server, bucket, str(tmp_path / "vae")), _text(tmp_path)]).image_datasets[0]
    found = discover(dataset, progress=False)
    assert found.records == []
    assert found.skipped == {"empty caption": ["good.png"], "empty file": ["empty.jpg"],
                             "truncated or corrupt": ["cut.png"], "not an image": ["fake.png"]}
    assert (tmp_path / "vae" / "discovery.json").is_file()  # a local cache_dir_vae keeps discovery.json locally


def test_face_crops_and_pixels_come_from_the_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    from simpletuner.data.pipeline import prepare_training_data
    from simpletuner.data.transforms import load_image
    from test_data_crops import _draw_face

    bucket = s3_server.new_bucket()
    for name, image in (("face.png", _draw_face(600, 400, 480, 200, 70)),
                        ("blank.png", Image.new("RGB", (600, 400), (90, 90, 90)))):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        s3_server.write(bucket, f"data/{name}", buffer.getvalue())
    entry = _image_entry(s3_server, bucket, f"s3://{bucket}/vae", caption_strategy="filename", resolution=128,
                         resolution_type="pixel_area", crop=True, crop_style="face", crop_aspect="square")

    class Config:
        train_batch_size = 1

    data = prepare_training_data(Config, _parse([entry, _text(tmp_path)]), show_progress=False)
    by_name = {s.record.relative_path: s for s in data.samples["pics"]}
    assert by_name["face.png"].crop_top_left == (0, 64) and by_name["blank.png"].crop_top_left == (0, 32)
    assert {"vae/faces.json", "vae/discovery.json", "vae/dataset_settings.json"} <= set(s3_server.keys(bucket, "vae/"))
    pixels = load_image(by_name["face.png"])
    assert pixels.size == (128, 128) and pixels.getpixel((0, 0)) != (90, 90, 90)


# ------------------------------------------------------------------------------------- cache entries


def test_cache_entries_in_a_bucket_are_checked_like_files(s3_server: S3Server) -> None:
    import torch

    from simpletuner.caching.store import TensorStore
    from simpletuner.storage.s3 import S3Settings

    bucket = s3_server.new_bucket()
    settings = S3Settings("dataset 'pics'", "us-east-1", s3_server.url, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    for compress in (False, True):
        store = TensorStore(settings.storage(bucket, f"cache/{compress}", "cache_dir_vae"), compress)
        key = "cd" * 20
        latent = torch.randn(4, 8, 8)
        assert not store.is_intact(key) and store.load(key) is None and not store.has(key)
        store.save(key, {"latent": latent})
        assert store.is_intact(key) and torch.equal(store.load(key)["latent"], latent)
        name = f"cache/{compress}/cd/{key}.safetensors" + (".z" if compress else "")
        assert s3_server.keys(bucket, f"cache/{compress}/") == [name]
        data = s3_server.read(bucket, name)
        s3_server.write(bucket, name, data[:-10])  # cut short
        assert not store.is_intact(key) and store.load(key) is None and store.has(key)
        s3_server.write(bucket, name, b"\x10" + b"\x00" * 7 + b"{not json")  # garbage
        assert not store.is_intact(key) and store.load(key) is None
        store.remove(key)
        assert s3_server.keys(bucket, f"cache/{compress}/") == []


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_training_with_images_and_caches_in_the_bucket(
    s3_server: S3Server, tmp_path: Path, tiny_sdxl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = _two_class_bucket(s3_server, tmp_path)
    _write_mdb(tmp_path, [
        _image_entry(s3_server, bucket, f"s3://{bucket}/cache/vae"),
        {"id": "text", "dataset_type": "text_embeds", **_aws(s3_server, bucket),
         "cache_dir": f"s3://{bucket}/cache/text"},
    ])
    with caplog.at_level(logging.DEBUG, logger="simpletuner"):
        output = train_in_process(tmp_path, tiny_sdxl, "sdxl", "--max_train_steps", "2", "--train_batch_size", "2")
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    messages = _messages(caplog)
    assert "latent cache: 0 reused, 8 encoded" in messages
    texts = int(re.search(r"text-embed cache: 0 reused, (\d+) encoded", messages).group(1))
    latents = [k for k in s3_server.keys(bucket, "cache/vae/latents/") if k.endswith(".safetensors")]
    assert len(latents) == 8
    assert len(s3_server.keys(bucket, "cache/text/")) == texts >= 2  # both captions, at least
    assert {"cache/vae/discovery.json", "cache/vae/dataset_settings.json"} <= set(s3_server.keys(bucket, "cache/vae/"))
    assert not (tmp_path / "cache").exists(), "nothing is cached locally"
    _assert_no_credentials(messages + _files_text(output))

    # A second run (a fresh machine would do the same) reuses everything and reads no image.
    s3_server.recorder.reset()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(tmp_path, tiny_sdxl, "sdxl", "--max_train_steps", "2", "--train_batch_size", "2",
                         output_name="again")
    messages = _messages(caplog)
    assert "latent cache: 8 reused, 0 encoded" in messages and f"cache: {texts} reused, 0 encoded" in messages
    assert not [r for r in s3_server.recorder.gets(bucket, "/data/") if r.path.endswith(".png")]

    # A missing and a damaged object are encoded again, like damaged local entries.
    s3_server.client().delete_object(Bucket=bucket, Key=latents[0])
    s3_server.write(bucket, latents[1], s3_server.read(bucket, latents[1])[:-16])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(tmp_path, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2", output_name="third")
    assert "6 reused, 2 encoded (1 replacing damaged entries)" in _messages(caplog)


@pytest.mark.slow
def test_training_from_the_bucket_with_local_caches(
    s3_server: S3Server, tmp_path: Path, tiny_sdxl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = _two_class_bucket(s3_server, tmp_path)
    _write_mdb(tmp_path, [
        _image_entry(s3_server, bucket, str(tmp_path / "cache" / "vae")),
        {"id": "text", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "cache" / "text")},
    ])
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        output = train_in_process(tmp_path, tiny_sdxl, "sdxl", "--max_train_steps", "2", "--train_batch_size", "2")
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "vae" / "latents").rglob("*.safetensors"))) == 8
    assert len(list((tmp_path / "cache" / "text").rglob("*.safetensors"))) >= 2
    assert (tmp_path / "cache" / "vae" / "discovery.json").is_file()
    assert all(k.startswith("data/") for k in s3_server.keys(bucket)), "nothing is written to the bucket"
    # Images were downloaded whole once, to be encoded.
    whole = [r for r in s3_server.recorder.gets(bucket, "/data/") if r.path.endswith(".png") and not r.range]
    assert len(whole) == 8


# ------------------------------------------------------------------------------------ bad settings


def _check(entries: list) -> None:
    from simpletuner.storage.datasets import check_remote_storages

    check_remote_storages(_parse(entries))


@pytest.mark.parametrize(
    "change, error, fragments",
    [
        ({"aws_bucket_name": None}, DataError, ("'aws_bucket_name'", "required")),
        ({"aws_bucket_name": "no-such-bucket-here"}, DataError, ("'aws_bucket_name'", "does not exist")),
        ({"cache_dir_vae": "s3://no-such-cache-bucket/vae"}, DataError, ("'cache_dir_vae'", "does not exist")),
        ({"aws_endpoint_url": "http://127.0.0.1:9"}, DataError, ("'aws_endpoint_url'", "cannot reach")),
        ({"aws_endpoint_url": "not a url"}, DataError, ("'aws_endpoint_url'",)),
        ({"aws_secret_access_key": None}, DataError, ("'aws_secret_access_key'", "missing")),
        ({"instance_data_dir": "data"}, ConfigError, ("'instance_data_dir'", "aws_data_prefix")),
        ({"cache_dir_vae": "s3://"}, DataError, ("'cache_dir_vae'", "names no bucket")),
    ],
)
def test_bad_s3_settings_name_the_dataset_and_key(
    s3_server: S3Server, tmp_path: Path, change: dict, error: type, fragments: tuple
) -> None:
    bucket = s3_server.new_bucket()
    entry = _image_entry(s3_server, bucket, str(tmp_path / "vae"), **change)
    with pytest.raises(error) as caught:
        _check([entry, _text(tmp_path)])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("dataset 'pics': ")
    for fragment in fragments:
        assert fragment in message, message
    _assert_no_credentials(message)


@pytest.mark.parametrize(
    "entry",
    [
        {"id": "pics", "type": "local", "instance_data_dir": ".", "cache_dir_vae": "v", "aws_bucket_name": "b"},
        {"id": "pics", "type": "local", "instance_data_dir": ".", "cache_dir_vae": "s3://bucket/vae"},
    ],
)
def test_s3_keys_on_a_local_dataset_are_refused(tmp_path: Path, entry: dict) -> None:
    with pytest.raises(ConfigError, match="^dataset 'pics': key '(aws_bucket_name|cache_dir_vae)'"):
        _parse([entry, _text(tmp_path)])


def test_an_aws_text_embeds_dataset_caches_in_its_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    image = {"id": "pics", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "v")}
    bucket = s3_server.new_bucket()
    simpletuner_style = {"id": "text", "dataset_type": "text_embeds", **_aws(s3_server, bucket, aws_data_prefix="emb"),
                         "cache_dir": ""}
    assert _parse([image, simpletuner_style]).text_embed_datasets[0].cache_dir == f"s3://{bucket}/emb/"
    with pytest.raises(ConfigError, match="^dataset 'text': key 'cache_dir' = 'cache/text' is a local folder"):
        _parse([image, {**simpletuner_style, "aws_data_prefix": None, "cache_dir": "cache/text"}])


def test_wrong_credentials_and_credentials_from_the_environment(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    with s3_server.enforcing_credentials() as (key_id, secret):
        with pytest.raises(DataError) as caught:  # the keys in the file are not known to the server
            _check([_image_entry(s3_server, bucket, str(tmp_path / "v")), _text(tmp_path)])
        message = str(caught.value)
        assert "refused" in message and "'aws_access_key_id'" in message and "InvalidAccessKeyId" in message
        _assert_no_credentials(message)

        wrong_secret = _image_entry(s3_server, bucket, str(tmp_path / "v"), aws_access_key_id=key_id,
                                    aws_secret_access_key="not-the-secret")
        with pytest.raises(DataError, match="SignatureDoesNotMatch"):
            _check([wrong_secret, _text(tmp_path)])

        # Without the keys, boto3's chain supplies them: here from the environment.
        # (no aws_data_prefix: moto's signature check stumbles on a "/" in the query string)
        from_env = _image_entry(s3_server, bucket, str(tmp_path / "v"), aws_access_key_id=None,
                                aws_secret_access_key=None, aws_data_prefix=None)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(DataError, match="environment variables or profile"):
            _check([from_env, _text(tmp_path)])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        _check([from_env, _text(tmp_path)])


def test_settings_never_show_credentials(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    config = _parse([_image_entry(s3_server, bucket, f"s3://{bucket}/vae"), _text(tmp_path)])
    shown = repr(config) + str(config.image_datasets[0]) + repr(config.image_datasets[0].s3)
    _assert_no_credentials(shown)
    assert config.image_datasets[0].instance_data_dir == f"s3://{bucket}/data/"


# ------------------------------------------------------------------------------------- the CLI


def _train_cli(cwd: Path, *flags: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_reports_a_missing_bucket_in_one_line_and_prints_no_secret(
    s3_server: S3Server, tmp_path: Path, tiny_sdxl: Path
) -> None:
    _write_mdb(tmp_path, [_image_entry(s3_server, "no-such-bucket-anywhere", str(tmp_path / "vae")), _text(tmp_path)])
    flags = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
             "--data_backend_config", str(tmp_path / "mdb.json"), "--output_dir", "out", "--max_train_steps", "1",
             "--mixed_precision", "no"]
    result = _train_cli(tmp_path, *flags, env={"SIMPLETUNER_LOG_LEVEL": "DEBUG"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dataset 'pics'" in errors[0] and "'aws_bucket_name'" in errors[0], result.stderr
    assert not (tmp_path / "out").exists(), "a rejected configuration leaves nothing behind"
    _assert_no_credentials(result.stdout + result.stderr)

    printed = _train_cli(tmp_path, *flags, "--print_config")
    assert printed.returncode == 0, printed.stderr[-2000:]
    _assert_no_credentials(printed.stdout + printed.stderr)


@pytest.mark.slow
def test_a_server_message_quoting_the_credentials_is_scrubbed(
    s3_server: S3Server, tmp_path: Path, tiny_sdxl: Path
) -> None:
    """An S3-compatible server whose error message quotes the request's credentials:
    the user's one-line error and debug.log must not repeat them."""
    bucket = _two_class_bucket(s3_server, tmp_path)
    _write_mdb(tmp_path, [_image_entry(s3_server, bucket, str(tmp_path / "vae")), _text(tmp_path)])
    sent = []

    def quote_credentials(environ: dict) -> Optional[tuple]:
        # Discovery's ranged reads of the images (after the bucket check, once debug.log is open).
        if environ.get("REQUEST_METHOD") != "GET" or not environ.get("HTTP_RANGE"):
            return None
        # Both within the first 200 characters, which is what the message keeps.
        message = (f"could not verify secret {SECRET_ACCESS_KEY} against request signed with "
                   f"{environ.get('HTTP_AUTHORIZATION')}")
        sent.append(message)
        return 400, "InvalidArgument", message

    s3_server.recorder.fault = quote_credentials
    result = _train_cli(tmp_path, "--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
                        "--data_backend_config", str(tmp_path / "mdb.json"), "--output_dir", "out",
                        "--max_train_steps", "1", "--mixed_precision", "no",
                        env={"SIMPLETUNER_LOG_LEVEL": "DEBUG"})
    assert sent and ACCESS_KEY_ID in sent[0] and SECRET_ACCESS_KEY in sent[0], "no message quoted the credentials"
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    # The server's message still reaches the user, with the credentials masked.
    assert "InvalidArgument" in errors[0] and "against request signed with" in errors[0], errors[0]
    assert errors[0].count("***redacted***") == 2, errors[0]
    _assert_no_credentials(result.stdout + result.stderr)
    debug_log = tmp_path / "out" / "debug.log"
    assert debug_log.is_file(), "the run failed before its log was opened"
    _assert_no_credentials(debug_log.read_text(encoding="utf-8"))
