"""What the trainer calls: :meth:`Validation.at_start` before the first step and
:meth:`Validation.after_step` after each optimizer step.

A validation renders every prompt at every resolution (``--num_validation_images``
seeds each) with the weights ``--ema_validation`` names, writes the step's
folder (layout.py), scores the images with CLIP when asked, and sends images
and scalars to the trackers.  It runs on the main process while the others
wait.  A failure is one error line (the traceback goes to debug.log) and a
``validation/failed`` record in the trackers; training goes on.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

from simpletuner.errors import DataError
from simpletuner.validation.layout import GRID, RenderedImage, make_grid, read_validation, write_validation
from simpletuner.validation.prompts import UNCONDITIONAL, ValidationPrompt, all_prompts, parse_resolutions, \
    size_multiple, validation_enabled

logger = logging.getLogger(__name__)
BENCHMARK_STEP = 0


class Validation:
    def __init__(self, config: Any, family: Any, source: Any, output_dir: Any) -> None:
        self.config = config
        self.family = family
        self.source = source
        self.output_dir = output_dir
        self.enabled = validation_enabled(_values(config))
        self.resolutions = parse_resolutions(config.validation_resolution, size_multiple(family.name)) \
            if self.enabled else []
        self.prompts: list[ValidationPrompt] = []
        self._text_dataset: Optional[str] = None
        self._pipeline: Any = None
        self._embeds: dict[tuple[Optional[str], str], Any] = {}
        self._scorer: Any = None

    # -- before caching ---------------------------------------------------------
    def prompts_to_cache(self, data: Any, seed: int) -> list[str]:
        """Fix the prompts; returns the texts the text-embed cache must hold for them."""
        if not self.enabled:
            return []
        captions = {dataset_id: [s.caption for s in samples] for dataset_id, samples in data.samples.items()}
        self.prompts = all_prompts(_values(self.config), captions, seed)
        self._text_dataset = next(iter(data.samples), None)
        texts = [p.prompt for p in self.prompts if p.dataset_id is None]
        return texts + [self.config.validation_negative_prompt or ""]

    # -- called by the trainer ----------------------------------------------------
    def at_start(self, trainer: Any) -> Optional[Path]:
        """The base model's benchmark at step 0; --validation_on_startup at any step.

        Returns the grid written (main process, on success), for the webhooks.
        """
        if not self.enabled:
            return None
        step = trainer.state.global_step
        benchmark = step == BENCHMARK_STEP and not self.config.disable_benchmark
        grid = None
        if benchmark:
            grid = self._validate(trainer, step, benchmark=True)
        if self.config.validation_on_startup:
            if benchmark:
                logger.info("--validation_on_startup: the step-0 benchmark images are the untrained model's")
            else:
                grid = self._validate(trainer, step, benchmark=False)
        return grid

    def after_step(self, trainer: Any) -> Optional[Path]:
        """Validate at every multiple of --validation_steps (so a resumed run keeps the steps)."""
        step = trainer.state.global_step
        if self.enabled and step % self.config.validation_steps == 0:
            return self._validate(trainer, step, benchmark=False)
        return None

    # -- one validation -----------------------------------------------------------
    def _validate(self, trainer: Any, step: int, benchmark: bool) -> Optional[Path]:
        accelerator = trainer.accelerator
        grid = None
        if accelerator.is_main_process:
            started = time.perf_counter()
            try:
                images = self._render_all(trainer, step, benchmark)
                grid = self._finish(trainer, step, images, time.perf_counter() - started, benchmark) / GRID
            except Exception as error:  # a validation must never end a long run
                self._report_failure(accelerator, step, error)
        accelerator.wait_for_everyone()
        return grid

    def _render_all(self, trainer: Any, step: int, benchmark: bool) -> list[RenderedImage]:
        from simpletuner.attention.apply import validation_attention
        from simpletuner.validation.state import training_state_kept

        denoiser = trainer.accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)
        images: list[RenderedImage] = []
        base_seed = self._base_seed(trainer)
        with training_state_kept(denoiser, trainer.optimizer, trainer.trained_parameters), \
                validation_attention(denoiser, self.config, self.family), \
                self._pipeline_on_device(trainer, denoiser) as pipeline, trainer.accelerator.autocast():
            for weights, context in self._weights(trainer, denoiser, benchmark):
                with context:
                    images += self._render_prompts(trainer, pipeline, weights, base_seed)
        return images

    def _render_prompts(self, trainer: Any, pipeline: Any, weights: str, base_seed: int) -> list[RenderedImage]:
        from simpletuner.validation.render import batched, render_image

        negative = batched(self._embeds_of(trainer, None, self.config.validation_negative_prompt or ""),
                           trainer.device, trainer.dtype)
        images = []
        for prompt in self.prompts:
            positive = batched(self._embeds_of(trainer, prompt.dataset_id, prompt.prompt), trainer.device,
                               trainer.dtype)
            shortname = prompt.shortname + ("-ema" if weights == "ema" else "")
            for width, height in self.resolutions:
                for index in range(self.config.num_validation_images):
                    seed = base_seed + index
                    image = render_image(pipeline, self.family, positive, negative, width, height, seed,
                                         self.config.validation_num_inference_steps)
                    images.append(RenderedImage(image, prompt.prompt, shortname, width, height, seed, index,
                                                weights))
        return images

    def _weights(self, trainer: Any, denoiser: Any, benchmark: bool) -> list[tuple[str, Any]]:
        """(label, context) for each set of weights to render with."""
        if benchmark:
            base = trainer.trainable.base_model(denoiser) if trainer.trainable.has_base_model else nullcontext()
            return [("base", base)]
        strength = self._lycoris_strength(trainer)
        mode = self.config.ema_validation if trainer.ema is not None else "none"
        chosen = []
        if mode in ("none", "comparison"):
            chosen.append(("trained", strength()))
        if mode in ("ema_only", "comparison"):
            chosen.append(("ema", _both(trainer.ema.swapped_in(), strength())))
        return chosen

    def _lycoris_strength(self, trainer: Any) -> Any:
        network = getattr(trainer.trainable, "network", None)
        if network is None:
            return nullcontext
        from simpletuner.training.lycoris_adapter import lycoris_multiplier

        return lambda: lycoris_multiplier(network, self.config.validation_lycoris_strength)

    def _base_seed(self, trainer: Any) -> int:
        if self.config.validation_randomize:
            # Not from any generator training uses, so training draws what it always did.
            return random.SystemRandom().randrange(2**31)
        seed = self.config.validation_seed
        return seed if seed is not None else trainer.state.seed

    def _embeds_of(self, trainer: Any, dataset_id: Optional[str], text: str) -> Any:
        from simpletuner.caching.keys import text_key

        dataset_id = dataset_id or self._text_dataset
        key = (dataset_id, text)
        if key not in self._embeds:
            entry = trainer.lookup.text_stores[dataset_id].load(text_key(text, trainer.lookup.text_identity))
            if entry is None:
                raise DataError(f"dataset '{dataset_id}': no text-embed cache entry for the validation prompt "
                                f"{text[:40]!r}; restart to encode it")
            self._embeds[key] = entry
        return self._embeds[key]

    @contextmanager
    def _pipeline_on_device(self, trainer: Any, denoiser: Any) -> Iterator[Any]:
        """The pipeline, built once; the VAE visits the accelerator only while rendering."""
        if self._pipeline is None:
            self._pipeline = self._build(denoiser)
        vae = self._pipeline.vae
        vae.to(trainer.device)
        try:
            yield self._pipeline
        finally:
            vae.to("cpu")

    def _build(self, denoiser: Any) -> Any:
        from simpletuner.caching.vae_dtype import vae_dtype
        from simpletuner.logs import quiet_libraries
        from simpletuner.validation.pipeline import build_pipeline, load_inference_scheduler

        quiet_libraries()
        vae = self.family.load_vae(self.source, vae_dtype(self.config))
        if self.config.validation_torch_compile:
            import torch

            denoiser = torch.compile(denoiser)
        return build_pipeline(self.family, denoiser, vae, load_inference_scheduler(self.family, self.source,
                                                                                  self.config))

    # -- after rendering ------------------------------------------------------------
    def _finish(self, trainer: Any, step: int, images: list[RenderedImage], seconds: float,
                benchmark: bool) -> Path:
        from simpletuner.validation.trackers import send_images

        scalars: dict[str, float] = {"validation/duration_s": seconds}
        if self.config.evaluation_type == "clip":
            scalars.update(self._clip_scores(trainer, images))
        shown_beside = None if benchmark or self.config.disable_benchmark else \
            read_validation(self.output_dir, BENCHMARK_STEP)
        folder = write_validation(self.output_dir, step, images, shown_beside)
        trainer.accelerator.log(scalars, step=step)
        send_images(trainer.accelerator, self.config, step, images, make_grid(images, shown_beside))
        logger.info("validation at step %d: %d image(s) in %.1fs -> %s", step, len(images), seconds, folder)
        return folder

    def _clip_scores(self, trainer: Any, images: list[RenderedImage]) -> dict[str, float]:
        from simpletuner.validation.clip_score import ClipScorer

        scored = [item for item in images if item.row != UNCONDITIONAL]
        if not scored:
            return {}
        if self._scorer is None:
            self._scorer = ClipScorer(self.config.pretrained_evaluation_model_name_or_path, trainer.device)
        for item, score in zip(scored, self._scorer.scores([i.image for i in scored], [i.prompt for i in scored])):
            item.clip_score = score
        by_prompt: dict[str, list[float]] = {}
        for item in scored:
            by_prompt.setdefault(item.shortname, []).append(item.clip_score)
        scalars = {f"validation/clip_score/{name}": sum(v) / len(v) for name, v in by_prompt.items()}
        scalars["validation/clip_score"] = sum(scalars.values()) / len(scalars)
        return scalars

    def _report_failure(self, accelerator: Any, step: int, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        logger.error("validation at step %d failed (%s); training continues, traceback in %s", step, reason,
                     Path(self.output_dir) / "debug.log")
        logger.debug("validation at step %d failed", step, exc_info=error)
        try:
            accelerator.log({"validation/failed": 1, "validation/error": reason}, step=step)
        except Exception:  # a tracker that cannot take the record must not end the run either
            logger.debug("could not record the failed validation in the trackers", exc_info=True)


@contextmanager
def _both(first: Any, second: Any) -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(first)
        stack.enter_context(second)
        yield


def _values(config: Any) -> dict[str, Any]:
    """The options as a mapping (TrainConfig is a frozen dataclass)."""
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else dict(vars(config))
