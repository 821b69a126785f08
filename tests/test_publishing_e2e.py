"""Publishing end to end: real training runs push to a Hub on loopback through huggingface_hub.

Two runs of a tiny SDXL LoRA.  The first validates (real images, drawn by the
validation package) and pushes checkpoints while it trains, and the final weights,
card and validation images at the end, posting webhooks throughout;
every secret planted in it is then looked for in every file written and every byte
sent.  The second meets a Hub that answers 500 and then goes away: training still
finishes, the files stay intact, the run exits 4 naming the retry command, and that
command then publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from family_harness import write_two_class_project
from hub_server import FakeHub
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HUB_TOKEN = "hf_PlantedHubToken0123456789"
SECRETS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY0000001",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-9f8e7d6c5b4a",
    "WANDB_API_KEY": "planted-wandb-key-0123456789abcdef0123456789",
    "COMET_API_KEY": "planted-comet-key-abcdef0123",
}
REPO = "tester/tiny-lora"
STEPS = 4
# Two prompts, one cheap image each, every 2 steps; the benchmark (step 0) stays off
# so the webhooks' sequence is the training's own.
VALIDATION = ("--validation_prompt", "zxq style red", "--user_prompt_library", "PROMPTS", "--validation_steps", "2",
              "--validation_resolution", "64", "--validation_num_inference_steps", "1",
              "--validation_disable_unconditional", "--disable_benchmark")


def _project(tmp: Path) -> Path:
    root = write_two_class_project(tmp, per_class=2)
    entries = json.loads((root / "mdb.json").read_text())
    entries[0].update(instance_prompt="zxq style", prepend_instance_prompt=True)
    (root / "mdb.json").write_text(json.dumps(entries))
    return root


def _latest_manifest(results: Path) -> dict:
    return json.loads((results / "validation_images" / f"step_{STEPS:06d}" / "manifest.json").read_text())


def _train(argv: list[str], patch: pytest.MonkeyPatch) -> int:
    from accelerate.state import AcceleratorState

    from simpletuner.cli.train import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return main(argv)


def _argv(root: Path, model: Path, *flags: str) -> list[str]:
    return ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
            "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / "output"),
            "--mixed_precision", "no", "--seed", "0", "--train_batch_size", "2", "--max_train_steps", str(STEPS),
            "--push_to_hub", "--hub_model_id", REPO, "--hub_token", HUB_TOKEN, *flags]


def _hub_environment(patch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    import huggingface_hub.constants

    patch.setenv("HF_ENDPOINT", hub.endpoint)
    patch.setenv("SIMPLETUNER_PUBLISH_RETRY_SECONDS", "0.3,0.3")
    # The loopback Hub serves LFS, not Xet's storage protocol (see hub_server.py).
    patch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path):
    root = _project(tmp_path_factory.mktemp("publish"))
    results = root / "output" / "tiny-lora"
    hub, hooks = FakeHub(HUB_TOKEN), WebhookReceiver()
    discord_url, raw_url = f"{hooks.url}/discord/SecretDiscordPath77", f"{hooks.url}/raw/SecretRawPath88"
    (root / "prompts.json").write_text(json.dumps({"blue": "zxq style blue"}))
    validation = [str(root / "prompts.json") if arg == "PROMPTS" else arg for arg in VALIDATION]
    (root / "webhooks.json").write_text(json.dumps([
        {"webhook_type": "discord", "webhook_url": discord_url, "message_prefix": "box1"},
        {"webhook_type": "raw", "callback_url": raw_url},
    ]))
    patch = pytest.MonkeyPatch()
    _hub_environment(patch, hub)
    for name, value in SECRETS_ENV.items():
        patch.setenv(name, value)
    _final_save_waits_for_the_first_checkpoint_push(patch, hub)
    console = root / "console.txt"
    try:
        with open(console, "w") as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                code = _train(_argv(root, tiny_sdxl, "--push_checkpoints_to_hub", "--checkpointing_steps", "2",
                                    "--webhook_config", str(root / "webhooks.json"),
                                    "--webhook_reporting_interval", "1", "--model_card_note", "NOTE-LINE: tiny",
                                    *validation),
                              patch)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        patch.undo()
        hooks.stop()
    yield {"code": code, "root": root, "results": results, "hub": hub, "hooks": hooks,
           "urls": (discord_url, raw_url), "console": console.read_text()}
    hub.stop()


def _final_save_waits_for_the_first_checkpoint_push(patch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    """Hold the final save (up to a minute) until checkpoint-2's commit reaches the Hub.

    On a busy machine the four tiny steps can end before a background upload
    does; waiting here makes "pushed while training went on" a fact the test
    can check, not a race.  Pushes made only at the end never arrive in time.
    """
    import time

    from simpletuner.training.trainer import Trainer

    real = Trainer._save_final

    def save_final(trainer: Trainer):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                c.message == "SimpleTuner: checkpoint-2" for c in hub.state.commits):
            time.sleep(0.05)
        return real(trainer)

    patch.setattr(Trainer, "_save_final", save_final)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_run_finishes_and_every_file_arrives_byte_for_byte(published) -> None:
    assert published["code"] == 0, published["console"][-2000:]
    results, files = published["results"], published["hub"].files(REPO)
    first_image = f"validation_images/step_000004/{_latest_manifest(results)['images'][0]['file']}"
    for name in ("pytorch_lora_weights.safetensors", "README.md", "training_config.json", "run_summary.json",
                 first_image, "validation_images/step_000004/grid.png", "validation_images/step_000004/manifest.json"):
        assert name in files, sorted(files)
        assert _sha(files[name]) == _sha((results / name).read_bytes()), name
    for step in (2, 4):
        local = results / f"checkpoint-{step}"
        for path in local.rglob("*"):
            if path.is_file():
                remote = f"checkpoints/checkpoint-{step}/{path.relative_to(local).as_posix()}"
                assert _sha(files[remote]) == _sha(path.read_bytes()), remote
    # Left out: checkpoints at the top level, the debug log, the lock, older validation steps.
    assert not [n for n in files if n.startswith(("checkpoint-", "debug.log", ".", "validation_images/step_000002"))]


def test_checkpoints_were_pushed_while_training_went_on(published) -> None:
    commits = published["hub"].state.commits
    messages = [c.message for c in commits]
    assert messages.index("SimpleTuner: checkpoint-2") < messages.index(f"SimpleTuner: step {STEPS}")
    # checkpoint-2's commit landed before the final weights were even written.
    first = next(c for c in commits if c.message == "SimpleTuner: checkpoint-2")
    final_written = (published["results"] / "pytorch_lora_weights.safetensors").stat().st_mtime
    assert first.time < final_written


def test_card_metadata_widget_note_and_gallery(published) -> None:
    card = published["hub"].files(REPO)["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-to-image" and meta["library_name"] == "diffusers"
    assert {"diffusers", "lora", "text-to-image", "sdxl", "not-for-all-audiences"} <= set(meta["tags"])
    assert meta["instance_prompt"] == "zxq style"
    # The widget is the last validation's images, as the validation package wrote them.
    drawn = _latest_manifest(published["results"])["images"]
    assert sorted(image["prompt"] for image in drawn) == ["zxq style blue", "zxq style red"]
    assert meta["widget"] == [{"text": image["prompt"], "output": {"url": f"validation_images/step_000004/{image['file']}"}}
                              for image in drawn]
    body = card.split("---", 2)[2]
    assert body.index("NOTE-LINE: tiny") < body.index("## Training")
    assert "| steps | 4 " in body and "| classes | 4 | 64px |" in body
    red = next(image["file"] for image in drawn if image["prompt"] == "zxq style red")
    assert f"![zxq style red](validation_images/step_000004/{red})" in body


def test_token_travels_only_in_the_authorization_header(published) -> None:
    requests = published["hub"].state.requests
    assert requests, "nothing reached the Hub"
    for request in requests:
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert HUB_TOKEN not in request.path + json.dumps(others) and HUB_TOKEN.encode() not in request.body
        if not request.path.startswith("/lfs/"):  # LFS uploads go to storage URLs, unauthenticated
            assert request.headers.get("authorization") == f"Bearer {HUB_TOKEN}", request.path


def test_webhooks_tell_start_each_checkpoint_validation_and_finish(published) -> None:
    hooks = published["hooks"]
    discord = [p.json["content"] for p in hooks.on("/discord/")]
    assert len(discord) == 6, discord
    assert discord[0] == f"box1 Training {REPO} started for 4 steps."
    assert [m.split(" ", 1)[1] for m in discord[1:5]] == [
        "Saved checkpoint-2.", "Validation images at step 2.", "Saved checkpoint-4.", "Validation images at step 4."]
    assert "finished at step 4" in discord[5] and REPO in discord[5]
    # Each validation's grid travels with its Discord post, byte for byte.
    grids = [p for p in hooks.on("/discord/") if "Validation images" in p.json["content"]]
    for post, step in zip(grids, (2, 4)):
        grid = published["results"] / "validation_images" / f"step_{step:06d}" / "grid.png"
        assert grid.read_bytes() in post.body
    raw = [p.json for p in hooks.on("/raw/")]
    events = [(e["event"], e.get("step")) for e in raw]
    assert events == [("started", None), ("progress", 1), ("progress", 2), ("checkpointed", 2), ("validated", 2),
                      ("progress", 3), ("progress", 4), ("checkpointed", 4), ("validated", 4), ("finished", 4)]
    assert all(isinstance(e["loss"], float) for e in raw if e["event"] == "progress")


def test_no_secret_in_any_file_written_or_byte_sent(published) -> None:
    secrets = [HUB_TOKEN, *published["urls"], *SECRETS_ENV.values()]
    # The secret parts of the webhook URLs, as they could also appear split from the host.
    secrets += ["SecretDiscordPath77", "SecretRawPath88"]
    haystacks = {str(p): p.read_bytes() for p in published["results"].rglob("*") if p.is_file()}
    haystacks.update({f"hub:{name}": data for name, data in published["hub"].files(REPO).items()})
    for request in published["hub"].state.requests:
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        haystacks[f"request {request.path}"] = request.path.encode() + json.dumps(others).encode() + request.body
    for post in published["hooks"].posts:
        haystacks[f"webhook post to {post.path[:9]}"] = post.body
    haystacks["console"] = published["console"].encode()
    assert len(haystacks) > 30
    for where, data in haystacks.items():
        for secret in secrets:
            assert secret.encode() not in data, f"a planted secret ({secret[:6]}...) is in {where}"


def test_card_snippet_runs_against_what_was_pushed(published, tmp_path: Path) -> None:
    card = published["hub"].files(REPO)["README.md"].decode()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f"load_lora_weights('{REPO}'" in snippet
    # As written, except one denoising step instead of the card's 30, to keep the test short.
    snippet, count = re.subn(r"num_inference_steps=\d+", "num_inference_steps=1", snippet)
    assert count == 1
    env = {**os.environ, "HF_ENDPOINT": published["hub"].endpoint, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": HUB_TOKEN}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "output.png") as image:
        assert image.size == (64, 64)
    downloads = [r for r in published["hub"].state.requests if "/resolve/" in r.path and r.method == "GET"]
    assert any(r.path.endswith("/pytorch_lora_weights.safetensors") for r in downloads)


# ------------------------------------------------------------------ a push that fails


def test_failed_push_keeps_training_and_the_retry_command_publishes(tmp_path: Path, tiny_sdxl: Path, capfd) -> None:
    root = _project(tmp_path)
    hub = FakeHub(HUB_TOKEN)
    answered = []

    def fault(method: str, path: str):
        if path == "/api/whoami-v2":
            return None
        answered.append(path)
        if len(answered) == 1:  # the first upload request gets a 500; then the Hub is gone
            import threading

            threading.Timer(0.05, hub.stop).start()
        return 500

    hub.state.fault = fault
    patch = pytest.MonkeyPatch()
    _hub_environment(patch, hub)
    try:
        code = _train(_argv(root, tiny_sdxl, "--max_train_steps", "2", "--checkpointing_steps", "2"), patch)
    finally:
        patch.undo()
    text = capfd.readouterr().err
    results = root / "output" / "tiny-lora"
    from simpletuner.errors import PUBLISH_FAILED_EXIT_CODE

    assert code == PUBLISH_FAILED_EXIT_CODE, text[-2000:]
    assert "(HTTP 500); trying again" in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert "training finished and its files are intact" in errors[0] and "could not connect" in errors[0]
    command = errors[0].split("retry with: ", 1)[1]
    assert command == (f"python -m simpletuner.publish --output_dir {results} --hub_model_id {REPO}")
    before = {p.name: _sha(p.read_bytes()) for p in results.iterdir() if p.is_file()}
    assert {"pytorch_lora_weights.safetensors", "README.md", "training_config.json"} <= set(before)
    from safetensors.torch import load_file

    assert load_file(str(results / "pytorch_lora_weights.safetensors"))

    second = FakeHub(HUB_TOKEN)
    env = {**os.environ, "HF_ENDPOINT": second.endpoint, "HF_TOKEN": HUB_TOKEN, "HF_HUB_DISABLE_XET": "1",
           "PYTHONPATH": str(ROOT)}
    try:
        retry = subprocess.run([sys.executable, *command.split()[1:]], env=env, capture_output=True, text=True,
                               timeout=300)
        files = second.files(REPO)
    finally:
        second.stop()
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert f"published {results} to {second.endpoint}/{REPO}" in retry.stdout
    assert _sha(files["pytorch_lora_weights.safetensors"]) == before["pytorch_lora_weights.safetensors"]
    after = {p.name: _sha(p.read_bytes()) for p in results.iterdir() if p.is_file()}
    assert after == before  # publishing only reads (the card it rewrites names the same repository)
    assert HUB_TOKEN not in retry.stdout + retry.stderr


# ------------------------------------------------------------------ a run that dies


def test_a_run_that_diverges_posts_the_failure_with_step_and_last_loss(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path)
    hooks = WebhookReceiver()
    (root / "hooks.json").write_text(json.dumps({"webhook_type": "raw", "webhook_url": f"{hooks.url}/raw"}))
    argv = [a for a in _argv(root, tiny_sdxl, "--webhook_config", str(root / "hooks.json"),
                             "--webhook_reporting_interval", "1", "--learning_rate", "1e38",
                             "--max_train_steps", "6")
            if a not in ("--push_to_hub", "--hub_token", HUB_TOKEN)]
    patch = pytest.MonkeyPatch()
    try:
        code = _train(argv, patch)
    finally:
        patch.undo()
        hooks.stop()
    from simpletuner.errors import USER_ERROR_EXIT_CODE

    assert code == USER_ERROR_EXIT_CODE
    events = [p.json for p in hooks.posts]
    assert events[0]["event"] == "started" and events[-1]["event"] == "failed"
    failed, progress = events[-1], [e for e in events if e["event"] == "progress"]
    assert failed["error"].startswith("TrainingDiverged: ")
    # The step and loss of the last step that completed, as the progress posts reported them.
    assert progress and failed["step"] == progress[-1]["step"] and failed["last_loss"] == progress[-1]["loss"]
    assert not (root / "output" / "tiny-lora" / "README.md").exists()  # a failed run gets no model card
