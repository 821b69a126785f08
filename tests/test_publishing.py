"""Publishing without a training run: webhooks, the model card, the token check, the retry command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hub_server import FakeHub
from webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_UnitTestToken42424242"


# ------------------------------------------------------------------------- webhooks
@pytest.fixture
def receiver():
    server = WebhookReceiver()
    yield server
    server.stop()


def _notifier(receiver: WebhookReceiver, **kwargs):
    from simpletuner.publishing.webhooks import Notifier, Webhook

    hooks = [Webhook("discord", f"{receiver.url}/discord/s3cr3t", "node7"), Webhook("raw", f"{receiver.url}/raw/s3cr3t")]
    return Notifier(hooks, run_name="me/lora", **kwargs)


def test_validation_post_carries_the_grid_to_discord_and_names_it_to_raw(receiver, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    Image.new("RGB", (32, 16), (1, 2, 3)).save(grid)
    _notifier(receiver).validated(250, grid)
    (discord,), (raw,) = receiver.on("/discord/"), receiver.on("/raw/")
    assert discord.content_type.startswith("multipart/form-data")
    assert discord.json == {"content": "node7 Validation images at step 250."}
    assert discord.files == {"grid.png": grid.read_bytes()}
    assert raw.json["event"] == "validated" and raw.json["step"] == 250 and raw.json["image_path"] == str(grid)


def test_validation_without_a_grid_posts_text_only(receiver) -> None:
    _notifier(receiver).validated(10, None)
    (discord,) = receiver.on("/discord/")
    assert discord.content_type.startswith("application/json") and not discord.files


def test_failure_post_has_step_loss_and_reason(receiver) -> None:
    _notifier(receiver).failed("TrainingDiverged: loss became nan at step 7", 6, 0.125)
    (discord,), (raw,) = receiver.on("/discord/"), receiver.on("/raw/")
    assert discord.json["content"] == ("node7 Training me/lora stopped at step 6, last loss 0.125: "
                                       "TrainingDiverged: loss became nan at step 7")
    assert (raw.json["event"], raw.json["step"], raw.json["last_loss"]) == ("failed", 6, 0.125)


def test_progress_reports_follow_the_interval_and_skip_discord(receiver) -> None:
    notifier = _notifier(receiver, reporting_interval=3)
    for step in range(1, 7):
        notifier.progress(step, 0.5, 1e-4)
    assert [p.json["step"] for p in receiver.on("/raw/")] == [3, 6]
    assert receiver.on("/discord/") == []


def test_webhook_that_fails_is_logged_without_its_url_and_never_raises(caplog, tmp_path: Path) -> None:
    from simpletuner.publishing.webhooks import Notifier, Webhook

    refusing = WebhookReceiver(status=500)
    gone = WebhookReceiver()
    gone.stop()
    hooks = [Webhook("discord", f"{refusing.url}/hook/TOPSECRET"), Webhook("raw", f"{gone.url}/hook/TOPSECRET")]
    try:
        with caplog.at_level(logging.WARNING, logger="simpletuner.publishing"):
            Notifier(hooks).finished(3, tmp_path)
    finally:
        refusing.stop()
    assert len(refusing.posts) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "webhook (discord) did not take the finished message: HTTP 500" in messages
    assert any(m.startswith("webhook (raw) could not be reached for the finished message") for m in messages)
    assert not any("TOPSECRET" in m or "127.0.0.1" in m for m in messages)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON (line 1"),
    (json.dumps({"webhook_type": "slack", "webhook_url": "https://x/SECRETPART"}), "webhook_type 'slack' is not one"),
    (json.dumps({"webhook_url": "ftp://x/SECRETPART"}), "webhook_url must be an http:// or https:// URL"),
    (json.dumps([{"webhook_url": "https://x/a"}, "oops"]), "entry 2: expected a JSON object"),
])
def test_bad_webhook_config_is_one_line_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError

    path = tmp_path / "hooks.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_config(["--print_config", "--model_family", "sdxl", "--webhook_config", str(path)], env={}, cwd=tmp_path)
    message = str(raised.value)
    assert message.startswith(f"--webhook_config={path}") and expected in message and "\n" not in message
    assert "SECRETPART" not in message


# -------------------------------------------------------------------------- the card
VALUES = {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0", "model_family": "sdxl",
          "model_type": "lora", "lora_type": "standard", "lora_format": "diffusers", "learning_rate": 1e-4,
          "lr_scheduler": "constant", "lr_warmup_steps": 0, "optimizer": "adamw_bf16", "train_batch_size": 1,
          "gradient_accumulation_steps": 1, "mixed_precision": "bf16", "base_model_precision": "no_change",
          "use_ema": False, "hub_model_id": None, "model_card_note": None, "model_card_safe_for_work": False,
          "hub_token": "***redacted***"}
SUMMARY = {"family": "sdxl", "denoiser_component": "unet", "adapter": "LoRA rank 16, alpha 16", "steps": 10,
           "epochs": 2, "sample_size": [64, 64], "datasets": [
               {"id": "faces", "images": 12, "resolution": "1024px", "captions": "textfile", "instance_prompt": None}]}


def _manifest(output: Path, step: int, prompts: list[str]) -> None:
    folder = output / "validation_images" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    images = []
    for index, prompt in enumerate(prompts):
        Image.new("RGB", (8, 8)).save(folder / f"{index}.png")
        images.append({"file": f"{index}.png", "prompt": prompt, "shortname": "s", "width": 8, "height": 8,
                       "seed": 1, "index": index})
    (folder / "manifest.json").write_text(json.dumps({"step": step, "images": images, "grid": "grid.png"}))


def _meta(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_card_without_validation_images_has_no_widget_or_gallery(tmp_path: Path) -> None:
    from simpletuner.publishing.card import render_card

    card = render_card(VALUES, SUMMARY, tmp_path)
    assert "widget" not in _meta(card) and "## Validation images" not in card
    assert "not-for-all-audiences" in _meta(card)["tags"]
    assert f"load_lora_weights({str(tmp_path.resolve())!r}" in card  # not pushed: the local folder


def test_card_reads_the_latest_readable_manifest(tmp_path: Path) -> None:
    from simpletuner.publishing.card import render_card

    _manifest(tmp_path, 100, ["old prompt"])
    _manifest(tmp_path, 200, ["new prompt"])
    broken = tmp_path / "validation_images" / "step_000300"
    broken.mkdir()
    (broken / "manifest.json").write_text("{truncated")
    card = render_card(VALUES, SUMMARY, tmp_path, repo_id="me/faces")
    assert _meta(card)["widget"] == [{"text": "new prompt", "output": {"url": "validation_images/step_000200/0.png"}}]
    assert "## Validation images (step 200)" in card and "old prompt" not in card
    assert "load_lora_weights('me/faces'" in card and "pipeline('new prompt'" in card


def test_card_note_safe_for_work_and_comfyui(tmp_path: Path) -> None:
    from simpletuner.publishing.card import render_card

    values = {**VALUES, "model_card_note": "Made for testing.", "model_card_safe_for_work": True,
              "lora_format": "comfyui"}
    card = render_card(values, SUMMARY, tmp_path)
    assert "not-for-all-audiences" not in _meta(card)["tags"]
    body = card.split("---", 2)[2]
    assert body.index("Made for testing.") < body.index("## Training")
    assert "`ComfyUI/models/loras/`" in body and "LoraLoader" in body


def test_card_for_lycoris_and_full_load_the_right_way(tmp_path: Path) -> None:
    from simpletuner.publishing.card import render_card

    lycoris = render_card({**VALUES, "lora_type": "lycoris"}, SUMMARY, tmp_path, repo_id="me/ly")
    assert "create_lycoris_from_weights(1.0, hf_hub_download('me/ly', 'pytorch_lora_weights.safetensors'), " \
           "pipeline.unet)" in lycoris and "lycoris" in _meta(lycoris)["tags"]
    full = render_card({**VALUES, "model_type": "full"}, SUMMARY, tmp_path, repo_id="me/full")
    assert "DiffusionPipeline.from_pretrained('me/full'" in full and "load_lora_weights" not in full


def test_users_own_readme_is_never_overwritten(tmp_path: Path) -> None:
    from simpletuner.publishing.card import write_card

    (tmp_path / "README.md").write_text("my notes")
    assert write_card(tmp_path, VALUES, SUMMARY) is None
    assert (tmp_path / "README.md").read_text() == "my notes"
    (tmp_path / "README.md").unlink()
    assert write_card(tmp_path, VALUES, SUMMARY) == tmp_path / "README.md"
    assert write_card(tmp_path, VALUES, SUMMARY, repo_id="me/x") is not None  # ours: rewritten
    assert "load_lora_weights('me/x'" in (tmp_path / "README.md").read_text()


# ------------------------------------------------------------------ the token check
def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CONFIG_"))}
    full.update(HF_HOME=str(cwd / "hf_home"), PYTHONPATH=str(ROOT), HF_HUB_DISABLE_XET="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "hf_rejected_token_000"])
def test_push_without_a_good_token_stops_before_anything_loads(tmp_path: Path, tiny_sdxl: Path, token) -> None:
    from family_harness import write_two_class_project

    hub = FakeHub(TOKEN)
    data = write_two_class_project(tmp_path, per_class=1) / "mdb.json"
    args = [str(ROOT / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
            "--data_backend_config", str(data), "--output_dir", str(tmp_path / "out"), "--push_to_hub",
            "--hub_model_id", "me/model"] + (["--hub_token", token] if token else [])
    try:
        result = _run(args, tmp_path, HF_ENDPOINT=hub.endpoint)
    finally:
        hub.stop()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --push_to_hub")
    assert ("needs a Hugging Face token" if token is None else "rejected the token (HTTP 401)") in lines[0]
    # Nothing was scanned, cached or written.
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    if token:
        assert token not in result.stderr
        paths = [r.path for r in hub.state.requests]
        assert "/api/whoami-v2" in paths and not any(p.startswith(("/api/repos", "/api/models")) for p in paths)


def test_publish_refuses_a_folder_that_is_not_a_results_folder(tmp_path: Path) -> None:
    result = _run(["-m", "simpletuner.publish", "--output_dir", str(tmp_path)], tmp_path, HF_TOKEN=TOKEN)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --output_dir={tmp_path}: no readable training_config.json there; "
                                     "point it at the results folder of a SimpleTuner run")


def test_hub_model_id_names_the_results_folder(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config

    config = load_config(["--print_config", "--output_dir", str(tmp_path / "out"), "--hub_model_id", "me/faces"],
                         env={}, cwd=tmp_path)
    assert config.output_dir == str(tmp_path / "out" / "faces")
    plain = load_config(["--print_config", "--output_dir", str(tmp_path / "out")], env={}, cwd=tmp_path)
    assert plain.output_dir == str(tmp_path / "out")


def test_bad_hub_model_id_is_refused(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError

    with pytest.raises(ConfigError, match="--hub_model_id=a/b/c is not a Hub repository name"):
        load_config(["--print_config", "--hub_model_id", "a/b/c"], env={}, cwd=tmp_path)
