"""The training run, read top to bottom as numbered steps (see ``Trainer.run``).

Everything resumable lives in ``TrainState`` or in objects with
``state_dict``/``load_state_dict`` (adapter, optimizer, schedule, sampler,
random generators); a checkpoint is those, written atomically.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch

from simpletuner.attention.apply import prepare_attention
from simpletuner.data.pipeline import PreparedData, load_backends, prepare_training_data
from simpletuner.distributed import efficient_loading, fsdp
from simpletuner.distributed.dcp import sharded_checkpoints_for
from simpletuner.errors import DataError, PublishError, UserError
from simpletuner.evaluation.held_out import build_evaluator
from simpletuner.evaluation.weights import averaged_weights
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.families.registry import get_family
from simpletuner.logs import attach_log_file
from simpletuner.memory.report import check_memory
from simpletuner.publishing.run_summary import run_summary
from simpletuner.publishing.session import RunPublishing
from simpletuner.quantisation.streaming import load_placed_denoiser
from simpletuner.trackers.credentials import check_tracker_credentials
from simpletuner.training.batches import caption_dropout, collate, to_device
from simpletuner.training.caches import prepare_caches
from simpletuner.training.checkpoint import publish
from simpletuner.training.disk_space import run_space_needed, space_warning, writing
from simpletuner.training.ema import build_ema
from simpletuner.training.grad_checkpointing import enable_gradient_checkpointing
from simpletuner.training.grad_clip import clip_gradients
from simpletuner.training.loss import weighted_loss
from simpletuner.training.noise_schedule import training_noise_scheduler
from simpletuner.training.optimizers import build_optimizer, set_optimizer_mode
from simpletuner.training.precision import apply_torch_settings, process_seed, seed_process
from simpletuner.training.prefetch import prefetched, stop_prefetch
from simpletuner.training.progress import TrainingProgress
from simpletuner.training.rank_health import check_data_plan
from simpletuner.training.regularisation import check_something_to_learn, mix_targets, regularisation_mask
from simpletuner.training.resume import load_training_state, resolve_resume_path, save_training_state
from simpletuner.training.run_lock import output_folder_lock
from simpletuner.training.schedulers import build_lr_scheduler, scaled_learning_rate
from simpletuner.training.setup import build_accelerator, training_dtype, write_run_config
from simpletuner.training.state import TrainState
from simpletuner.training.stop import RunStopped, StopSignals
from simpletuner.training.summary import Totals, log_changed_totals, log_summary, totals_of
from simpletuner.training.trained_text_encoders import TrainedTextEncoders, optimizer_groups
from simpletuner.training.trainable import trainable_for
from simpletuner.validation.runner import Validation

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def total_training_steps(config: Any, batches_per_epoch: int) -> int:
    """Optimizer steps the run will take; the same figure the summary prints."""
    if config.max_train_steps > 0:
        return config.max_train_steps
    steps = (config.num_train_epochs * batches_per_epoch) // config.gradient_accumulation_steps
    if steps < 1:
        raise DataError(
            f"{config.num_train_epochs} epoch(s) of {batches_per_epoch} batches is less than one "
            f"optimizer step with gradient_accumulation_steps={config.gradient_accumulation_steps}; "
            "train longer or accumulate fewer batches"
        )
    return steps


class Trainer:
    def __init__(self, config: Any, show_progress: bool = True, stop: Optional[StopSignals] = None) -> None:
        self.config = config
        self.show_progress = show_progress
        # Handlers installed by the caller (cli/train.py); without them no signal is deferred.
        self.stop = stop or StopSignals()
        self.family: ModelFamily = get_family(config.model_family, config)
        self.source = ModelSource.from_config(config, self.family)
        self.output_dir = Path(config.output_dir)
        self.trainable = trainable_for(config, self.family)
        self.validation = Validation(config, self.family, self.source, self.output_dir)

    def run(self) -> Path:
        """Train and return the folder holding the final weights."""
        # 0. The Hub token and webhook file, checked before anything else (a bad token
        #    stops the run in seconds); one run per output folder, claimed before
        #    anything is written there.
        self.publishing = RunPublishing.start(self.config, self.output_dir)
        with output_folder_lock(self.output_dir):
            try:
                return self._run_steps()
            except PublishError:  # trained and saved; only the push failed (exit 4)
                raise
            except BaseException as error:  # NaN, out of memory, a signal, a bug: say so, then stop
                self.publishing.failed(error)
                raise

    def _run_steps(self) -> Path:
        config = self.config
        # 1. Checks that need no scanning, before anything is written.
        self.source.check(self.family)
        check_tracker_credentials(config)
        backends = load_backends(config)
        resume_path = resolve_resume_path(config, self.output_dir)
        # 2. Accelerator, output folder, log file, seed.
        self.accelerator = build_accelerator(config, self.output_dir)
        self.device = self.accelerator.device
        self.dtype = training_dtype(config)
        attach_log_file(self.output_dir / "debug.log")
        if self.accelerator.is_main_process:  # options the model found ignores (config/inert.py: the others)
            for message in self.family.ignored_for_model():
                logger.warning(message)
        self.state = TrainState(seed=self._seed(resume_path))
        apply_torch_settings(config)
        # The same seed everywhere, so every process starts the adapter alike.
        seed_process(self.state.seed)
        if self.accelerator.is_main_process:
            write_run_config(config, self.output_dir)
        # 3. Data: discover, bucket, crop; the plan the sampler will follow.  The
        #    main process goes first, so downloads and header reads happen once
        #    and the other processes find them saved.
        with self.accelerator.main_process_first():
            data = prepare_training_data(config, backends, self.accelerator.num_processes, self._progress_enabled())
        planned_steps = total_training_steps(config, data.report.batches_per_epoch)
        # Every rank must plan the same steps, or one would wait forever for the others.
        check_data_plan(data, planned_steps, self.accelerator.num_processes)
        summary = self._log_summary(data, planned_steps, resume_path)
        check_something_to_learn(backends.image_datasets, data.report, self.trainable)
        check_memory(config, self.family, self.source, data.report.counts, self.device,
                     log=self.accelerator.is_main_process,
                     shards=fsdp.shard_count(config, self.accelerator.num_processes))
        # 4. Caches: encode what is missing, then free the encoders.  Images that
        #    cannot be decoded are left out here, which can change the step count.
        self.stop.enter("caching")
        self.lookup = prepare_caches(self.family, self.source, data, config, self.accelerator,
                                     self._progress_enabled(), seed=self.state.seed,
                                     extra_prompts=self.validation.prompts_to_cache(data, self.state.seed))
        total_steps = total_training_steps(config, data.report.batches_per_epoch)
        if summary is not None:
            log_changed_totals(summary, totals_of(data, total_steps), config)
        if config.cache_only:
            logger.info("caches are complete; --cache_only set, so not training")
            self.accelerator.end_training()
            return self.output_dir
        # 5. The denoiser with its trainable adapter.
        self.stop.enter("start-up")
        denoiser = self._load_trainable_denoiser(total_steps)
        # --fsdp_enable with several processes: each keeps a shard of every block.
        denoiser = fsdp.shard_denoiser(denoiser, config, self.family, self.device, self.accelerator.num_processes)
        self.objective = self.family.make_objective(self._load_noise_scheduler(), config)
        self.evaluator = build_evaluator(config, data, self.lookup, self.family, self.objective, self.state.seed,
                                         self.accelerator, self.dtype)
        # 6. Optimizer, learning-rate schedule, sampler.
        sampler = data.sampler(self.state.seed, self.accelerator.process_index, self.accelerator.num_processes)
        self.trained_parameters = self.trainable.parameters(denoiser)
        learning_rate = scaled_learning_rate(config, self.accelerator.num_processes)
        optimizer = build_optimizer(optimizer_groups(self.trained_parameters, self.trainable.text, config, learning_rate),
                                    config, learning_rate)
        lr_scheduler = build_lr_scheduler(optimizer, config, total_steps)
        self.ema = build_ema(self.trained_parameters, config, self.device)
        self.denoiser, self.optimizer = fsdp.prepare(self.accelerator, denoiser, optimizer, config)
        self.sharded_checkpoints = sharded_checkpoints_for(config, self.accelerator, self.output_dir)
        self.lr_scheduler = lr_scheduler
        # --dataloader_prefetch: a worker reads the next batches' cache entries during each step.
        self.sampler, self.lookup = prefetched(sampler, self.lookup, config)
        self.generator = torch.Generator().manual_seed(self.state.seed + self.accelerator.process_index)
        # From here each process may draw its own dropout masks (--seed_for_each_device).
        seed_process(process_seed(self.state.seed, self.accelerator.process_index, config.seed_for_each_device))
        # 7. Resume, then warn when the disk cannot hold what the run will write.
        if resume_path is not None:
            load_training_state(self, resume_path)
        self._warn_if_short_of_space(total_steps)
        # 8. The loop; from here a signal stops it after a step, with a checkpoint.
        set_optimizer_mode(self.optimizer, training=True)
        self.publishing.started(run_summary(config, self.family, self.trainable, data, total_steps,
                                            self.accelerator.num_processes, self.state.seed))
        if self.state.global_step == 0:
            self._evaluate()  # the baseline; a resumed run evaluated its step before the checkpoint
        self._validated(self.validation.at_start(self))  # the base model's benchmark images at step 0
        self.stop.enter("training", deferring=True)
        try:
            self._train_until(total_steps)
        finally:
            stop_prefetch(self.sampler)  # however the loop ended: last step, error or signal
        # 9. Final weights; then the model card and the Hub push (waiting for uploads).
        output = self._save_final()
        self.publishing.finished(self.state.global_step, self.state.epoch)
        return output

    # -- steps ------------------------------------------------------------------
    def _seed(self, resume_path: Optional[Path]) -> int:
        if resume_path is not None:
            from simpletuner.training.resume import checkpoint_seed

            return checkpoint_seed(resume_path)
        if self.config.seed is not None:
            return self.config.seed
        seed = random.SystemRandom().randrange(2**31)
        logger.info("no --seed given; using seed %d (set --seed to repeat this run)", seed)
        return seed

    def _progress_enabled(self) -> bool:
        return self.show_progress and self.accelerator.is_local_main_process

    def _load_trainable_denoiser(self, total_steps: int) -> torch.nn.Module:
        # Load frozen, cast, quantise (--base_model_precision; block by block when it
        # quantises) and move, in the order --quantize_via says; with
        # --fsdp_cpu_ram_efficient_loading only the main process reads the weights.
        denoiser = efficient_loading.load_denoiser(self.family, self.source, self.config, self.device,
                                                   self.trainable.frozen_dtype(self.dtype),
                                                   self.accelerator.is_main_process, self.accelerator.num_processes)
        # --fused_qkv_projections (before an adapter targets the projections), --attention_mechanism.
        prepare_attention(denoiser, self.config, self.family)
        self.trainable.prepare(denoiser)
        if self.config.train_text_encoder:
            self.trainable.text = TrainedTextEncoders(self.config, self.family, self.source, self.device,
                                                      total_steps, self.accelerator.num_processes)
        if self.config.lora_format == "comfyui":
            from simpletuner.training.adapters import diffusers_lora_state
            from simpletuner.training.lora_formats import check_kohya_layout

            # Now rather than at the first save: every trained module must keep its kohya name.
            check_kohya_layout(self.family, diffusers_lora_state(denoiser))
        if self.config.gradient_checkpointing or self.config.fsdp_activation_checkpointing:
            enable_gradient_checkpointing(denoiser, self.config.gradient_checkpointing_interval)
        denoiser.train()
        return denoiser

    def _load_noise_scheduler(self) -> Any:
        return training_noise_scheduler(self.family.load_noise_scheduler(self.source), self.config)

    def _train_until(self, total_steps: int) -> None:
        samples_per_step = (self.config.train_batch_size * self.config.gradient_accumulation_steps
                            * self.accelerator.num_processes)
        progress = TrainingProgress(total_steps, self.state.global_step, self._progress_enabled(),
                                    samples_per_step, report=self.accelerator.is_main_process)
        losses: list[float] = []
        started = time.perf_counter()
        batches = self.sampler.stream()
        while self.state.global_step < total_steps:
            # A new epoch may re-encode datasets that draw fresh crops every epoch.
            samples = self.lookup.for_epoch(next(batches), self.sampler.epoch)
            with self.accelerator.accumulate(self.denoiser):
                loss = self._loss(samples)
                self.accelerator.backward(loss)
                grad_norm = None
                if self.accelerator.sync_gradients:
                    grad_norm = clip_gradients(self.accelerator, self.trained_parameters,
                                               self.config.grad_clip_method, self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=self.config.set_grads_to_none)
            losses.append(loss.detach().item())
            if not math.isfinite(losses[-1]):
                # Checked on the value read for logging, so the step has no extra
                # device sync; raising here keeps the last checkpoint the last good one.
                raise TrainingDiverged(
                    f"loss became {losses[-1]} at step {self.state.global_step + 1}; lower --learning_rate "
                    "and resume from the last checkpoint (--resume_from_checkpoint latest)"
                )
            if not self.accelerator.sync_gradients:
                continue
            self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.samples_seen += samples_per_step
            if self.ema is not None:
                self.ema.after_optimizer_step(self.state.global_step)
            self.state.epoch = self.sampler.state_dict()["epoch"]
            step_loss = sum(losses) / len(losses)
            losses.clear()
            self._after_step(step_loss, grad_norm, started, progress)
            if self.sharded_checkpoints is not None:
                self.sharded_checkpoints.poll()  # publish a finished background checkpoint write
            self._stop_if_signalled(progress)
            started = time.perf_counter()
        progress.close()

    def _loss(self, samples: list) -> torch.Tensor:
        dropped = caption_dropout(len(samples), self.config.caption_dropout_probability, self.generator)
        text = self.trainable.text  # trained text encoders (--train_text_encoder) encode the captions now
        batch = to_device(collate(samples, self.lookup, self.family, dropped, cached_text=text is None),
                          self.device, self.dtype)
        if text is not None:
            batch.update(text.embeds(samples, dropped, self.dtype, self.state.global_step))
        batch.update(self.family.random_conditioning(len(samples), self.generator))
        noised = self.objective.noise(batch["latents"], self.generator)
        inputs = self.family.model_inputs(batch, noised.noisy, noised.timesteps)
        # Before the trained forward pass: the base pass may swap adapter
        # weights in place, which must not touch tensors autograd has saved.
        target = self._regularised_target(samples, inputs, noised)
        output = self.denoiser(**inputs)
        prediction = self.family.prediction(output, noised.noisy)
        return weighted_loss(prediction, target, noised.weights, self.config.loss_type, noised.huber_c)

    def _regularised_target(self, samples: list, inputs: dict, noised: Any) -> torch.Tensor:
        """Regularisation samples aim at the base model's own prediction (adapter off)."""
        mask = regularisation_mask(samples)
        if mask is None or not self.trainable.has_base_model:
            return noised.target
        with torch.no_grad(), self.trainable.base_model(self.accelerator.unwrap_model(self.denoiser)):
            base = self.family.prediction(self.denoiser(**inputs), noised.noisy)
        return mix_targets(mask, base, noised.target)

    def _after_step(self, loss: float, grad_norm: Any, started: float, progress: TrainingProgress) -> None:
        lr = self.lr_scheduler.get_last_lr()[0]
        step_time = time.perf_counter() - started
        samples = self.config.train_batch_size * self.config.gradient_accumulation_steps * self.accelerator.num_processes
        logs = {"loss": loss, "lr": lr, "epoch": self.state.epoch, "step_time": step_time,
                "samples_per_second": samples / step_time}
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        self.accelerator.log(logs, step=self.state.global_step)
        progress.step(self.state.global_step, loss, lr)
        self.publishing.after_step(self.state.global_step, loss, lr)
        self._evaluate()
        if self.state.global_step % self.config.checkpointing_steps == 0:
            self._save_checkpoint()
        self._validated(self.validation.after_step(self))

    def _validated(self, grid: Optional[Path]) -> None:
        """Tell the webhooks about a validation that wrote ``grid`` (None: none ran here)."""
        if grid is not None:
            self.publishing.validated(self.state.global_step, grid)

    def _evaluate(self) -> None:
        """The held-out loss (--eval_dataset_id) at validation steps, of the weights a save would keep."""
        if self.evaluator is not None and self.state.global_step % self.config.validation_steps == 0:
            with averaged_weights(self.optimizer, self.trained_parameters):
                self.evaluator.run(self.accelerator.unwrap_model(self.denoiser), self.state.global_step)

    def _save_checkpoint(self) -> None:
        # A finite loss can still come with an update that overflowed the
        # weights; never let such weights become the newest checkpoint.
        if not all(torch.isfinite(p).all() for p in self.trained_parameters):
            raise TrainingDiverged(
                f"weights became non-finite at step {self.state.global_step}; lower --learning_rate and "
                "resume from the last checkpoint (--resume_from_checkpoint latest)"
            )
        # Reported when the folder is in place: at once, or after an async write (poll/finish).
        step = self.state.global_step
        save_training_state(self, lambda folder: self.publishing.checkpointed(step, folder))

    def _stop_if_signalled(self, progress: TrainingProgress) -> None:
        """After SIGINT/SIGTERM (agreed by every rank): checkpoint this step and end the run."""
        signum = self.stop.agreed(self.accelerator)
        if signum is None:
            return
        progress.close()
        step = self.state.global_step
        if step % self.config.checkpointing_steps != 0:  # else _after_step has just saved it
            self._save_checkpoint()
        if self.sharded_checkpoints is not None:
            self.sharded_checkpoints.finish()  # a background write becomes the checkpoint named below
        if self.accelerator.is_main_process:
            logger.info("stopped after step %d, saved as checkpoint-%d; run again with "
                        "--resume_from_checkpoint latest to continue from step %d", step, step, step)
        self.accelerator.end_training()
        raise RunStopped(signum, step)

    def _save_final(self) -> Path:
        self.accelerator.wait_for_everyone()
        set_optimizer_mode(self.optimizer, training=False)  # schedule-free: save the averaged weights
        denoiser = self._final_denoiser()
        if self.accelerator.is_main_process:
            staging = self.output_dir / ".final.partial"
            shutil.rmtree(staging, ignore_errors=True)
            with writing("the final weights", self.output_dir, partial=staging):
                staging.mkdir()
                self.trainable.save_final(denoiser, staging, self.source)
                if self.ema is not None:
                    with self.ema.swapped_in():
                        self.trainable.save_ema(denoiser, staging)
                publish(staging, self.output_dir)
            logger.info("saved %s weights to %s", self.config.model_type, self.output_dir)
        self.accelerator.end_training()
        return self.output_dir

    def _final_denoiser(self) -> Any:
        """The trained denoiser as one whole module on the main process (collective under FSDP2)."""
        if self.sharded_checkpoints is not None:
            self.sharded_checkpoints.finish()  # a checkpoint still being written lands first
        if not fsdp.is_sharded(self.denoiser):
            return self.accelerator.unwrap_model(self.denoiser, keep_torch_compile=False)
        fsdp.log_shard_sizes(self.denoiser, self.optimizer, self.accelerator.process_index)
        return fsdp.gathered_denoiser(self.denoiser, self.accelerator.is_main_process, self._plain_denoiser)

    def _plain_denoiser(self) -> torch.nn.Module:
        """The denoiser as step 5 built it, unsharded, in CPU memory: what the gathered weights load into."""
        denoiser = load_placed_denoiser(self.family, self.source, self.config.base_model_precision,
                                        torch.device("cpu"), self.trainable.frozen_dtype(self.dtype),
                                        self.config.quantize_via)
        self.trainable.prepare(denoiser)
        return denoiser

    def _warn_if_short_of_space(self, total_steps: int) -> None:
        if self.accelerator.is_main_process:
            needed = run_space_needed(self, total_steps)
            logger.debug("disk space this run will need: %s", needed)
            warning = space_warning(self.output_dir, needed)
            if warning:
                logger.warning(warning)

    def _log_summary(self, data: PreparedData, total_steps: int, resume_path: Optional[Path]) -> Optional[Totals]:
        if not self.accelerator.is_main_process:
            return None
        return log_summary(self.config, self.family.name, self.trainable, data, total_steps,
                           self.accelerator.num_processes, resume_path)
