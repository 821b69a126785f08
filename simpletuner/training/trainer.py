"""The training run, read top to bottom as numbered steps (see ``Trainer.run``).

Everything resumable lives in ``TrainState`` or in objects with
``state_dict``/``load_state_dict`` (adapter, optimizer, schedule, sampler,
random generators); a checkpoint is those, written atomically.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from simpletuner.data.pipeline import PreparedData, load_backends, prepare_training_data
from simpletuner.data.sampler import BucketBatchSampler
from simpletuner.errors import DataError, UserError
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.families.registry import get_family
from simpletuner.logs import attach_log_file
from simpletuner.training.batches import collate, to_device
from simpletuner.training.caches import prepare_caches
from simpletuner.training.loss import weighted_mse
from simpletuner.training.optimizers import build_optimizer
from simpletuner.training.resume import load_training_state, resolve_resume_path, save_training_state
from simpletuner.training.schedulers import build_lr_scheduler
from simpletuner.training.setup import build_accelerator, training_dtype, write_run_config
from simpletuner.training.state import TrainState
from simpletuner.training.trainable import trainable_for

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
    def __init__(self, config: Any, show_progress: bool = True) -> None:
        self.config = config
        self.show_progress = show_progress
        self.family: ModelFamily = get_family(config.model_family)
        self.source = ModelSource.from_config(config)
        self.output_dir = Path(config.output_dir)
        self.trainable = trainable_for(config, self.family)

    def run(self) -> Path:
        """Train and return the folder holding the final weights."""
        config = self.config
        # 1. Checks that need no scanning, before anything is written.
        self.source.check()
        backends = load_backends(config)
        resume_path = resolve_resume_path(config, self.output_dir)
        # 2. Accelerator, output folder, log file, seed.
        self.accelerator = build_accelerator(config, self.output_dir)
        self.device = self.accelerator.device
        self.dtype = training_dtype(config)
        attach_log_file(self.output_dir / "debug.log")
        self.state = TrainState(seed=self._seed(resume_path))
        from accelerate.utils import set_seed

        # Seeds python, numpy and torch, so adapter initialisation repeats too.
        set_seed(self.state.seed)
        if self.accelerator.is_main_process:
            write_run_config(config, self.output_dir)
        # 3. Data: discover, bucket, crop; the plan the sampler will follow.
        data = prepare_training_data(
            config, backends, self.state.seed, self.accelerator.num_processes, self._progress_enabled()
        )
        total_steps = total_training_steps(config, data.report.batches_per_epoch)
        self._log_summary(data, total_steps, resume_path)
        # 4. Caches: encode what is missing, then free the encoders.
        self.lookup = prepare_caches(self.family, self.source, data, config, self.accelerator, self._progress_enabled())
        # 5. The denoiser with its trainable adapter.
        denoiser = self._load_trainable_denoiser()
        self.objective = self.family.make_objective(self._load_noise_scheduler(), config)
        # 6. Optimizer, learning-rate schedule, sampler.
        sampler = BucketBatchSampler(
            data.samples,
            config.train_batch_size,
            seed=self.state.seed,
            repeats=data.report.repeats,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        self.trained_parameters = self.trainable.parameters(denoiser)
        optimizer = build_optimizer(self.trained_parameters, config)
        lr_scheduler = build_lr_scheduler(optimizer, config, total_steps)
        self.denoiser, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        self.lr_scheduler, self.sampler = lr_scheduler, sampler
        self.generator = torch.Generator().manual_seed(self.state.seed + self.accelerator.process_index)
        # 7. Resume.
        if resume_path is not None:
            load_training_state(self, resume_path)
        # 8. The loop.
        self._train_until(total_steps)
        # 9. Final weights.
        return self._save_final()

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

    def _load_trainable_denoiser(self) -> torch.nn.Module:
        denoiser = self.family.load_denoiser(self.source)
        denoiser.requires_grad_(False)
        denoiser.to(self.device, dtype=self.trainable.frozen_dtype(self.dtype))
        self.trainable.prepare(denoiser)
        if self.config.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        denoiser.train()
        return denoiser

    def _load_noise_scheduler(self) -> Any:
        scheduler = self.family.load_noise_scheduler(self.source)
        if self.config.prediction_type:
            scheduler.register_to_config(prediction_type=self.config.prediction_type)
        return scheduler

    def _train_until(self, total_steps: int) -> None:
        progress = tqdm(
            total=total_steps, initial=self.state.global_step, desc="Training",
            disable=not self._progress_enabled(), unit="step",
        )
        losses: list[float] = []
        started = time.perf_counter()
        batches = self.sampler.stream()
        while self.state.global_step < total_steps:
            samples = next(batches)
            with self.accelerator.accumulate(self.denoiser):
                loss = self._loss(samples)
                self.accelerator.backward(loss)
                grad_norm = None
                if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
                    grad_norm = self.accelerator.clip_grad_norm_(self.trained_parameters, self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
            if not self.accelerator.sync_gradients:
                continue
            self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.epoch = self.sampler.state_dict()["epoch"]
            step_loss = sum(losses) / len(losses)
            losses.clear()
            self._after_step(step_loss, grad_norm, started, progress, total_steps)
            started = time.perf_counter()
        progress.close()

    def _loss(self, samples: list) -> torch.Tensor:
        batch = to_device(collate(samples, self.lookup, self.family), self.device, self.dtype)
        noised = self.objective.noise(batch["latents"], self.generator)
        output = self.denoiser(**self.family.model_inputs(batch, noised.noisy, noised.timesteps))
        prediction = self.family.prediction(output, noised.noisy)
        loss = weighted_mse(prediction, noised.target, noised.weights)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; lower --learning_rate "
                "and resume from the last checkpoint (--resume_from_checkpoint latest)"
            )
        return loss

    def _after_step(self, loss: float, grad_norm: Any, started: float, progress: Any, total_steps: int) -> None:
        lr = self.lr_scheduler.get_last_lr()[0]
        logs = {"loss": loss, "lr": lr, "epoch": self.state.epoch, "step_time": time.perf_counter() - started}
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        self.accelerator.log(logs, step=self.state.global_step)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        progress.update(1)
        step = self.state.global_step
        if step % self.config.checkpointing_steps == 0:
            save_training_state(self)

    def _save_final(self) -> Path:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            denoiser = self.accelerator.unwrap_model(self.denoiser)
            self.trainable.save_final(denoiser, self.output_dir, self.source)
            logger.info("saved %s weights to %s", self.config.model_type, self.output_dir)
        self.accelerator.end_training()
        return self.output_dir

    def _log_summary(self, data: PreparedData, total_steps: int, resume_path: Optional[Path]) -> None:
        config = self.config
        per_epoch = data.report.batches_per_epoch / config.gradient_accumulation_steps
        lines = [
            f"model: {config.pretrained_model_name_or_path} ({self.family.name}, {config.model_type}"
            f" rank {config.lora_rank})",
        ]
        for dataset_id, found in data.discovery.items():
            lines.append(found.summary())
        lines.append(data.report.table())
        lines.append(
            f"{per_epoch:g} optimizer steps per epoch (batch {config.train_batch_size} x "
            f"accumulation {config.gradient_accumulation_steps} x {self.accelerator.num_processes} "
            f"process(es)); {total_steps} steps in total"
            + (f", resuming from {resume_path.name}" if resume_path else "")
        )
        for line in "\n".join(lines).splitlines():
            logger.info(line)
