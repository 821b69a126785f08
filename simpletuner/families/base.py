"""The interface every model family implements.

A family is one module in ``simpletuner/families/`` holding everything that
is specific to one architecture: which diffusers/transformers classes make
it up, how captions become embeddings, how latents are scaled, what the
denoiser is called with and what it is trained to predict.  The trainer only
talks to this interface, so it never tests a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from simpletuner.errors import ModelError


@dataclass
class TextEncoders:
    """Tokenizers and encoders, in the order the pipeline names them."""

    tokenizers: list
    encoders: list


@dataclass
class ModelSource:
    """Where each component comes from: the base path plus user overrides."""

    base: str
    revision: Optional[str] = None
    variant: Optional[str] = None
    overrides: dict[str, tuple[str, Optional[str]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> "ModelSource":
        return cls(
            base=config.pretrained_model_name_or_path,
            revision=config.revision,
            variant=config.variant,
        )

    def check(self) -> None:
        """Fail early, in words, for a local folder that is not a diffusers model."""
        path = Path(self.base).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"--pretrained_model_name_or_path={self.base}: folder has no model_index.json; "
                    "point it at a diffusers model folder (the one containing unet/, vae/, ...)"
                )
        elif path.exists():
            raise ModelError(
                f"--pretrained_model_name_or_path={self.base}: is a file; single-file checkpoints "
                "are not implemented yet, use a diffusers model folder"
            )
        elif self.base.startswith((".", "/", "~")):
            raise ModelError(f"--pretrained_model_name_or_path={self.base}: no such folder")
        # Anything else is a hub id; from_pretrained resolves (and reports) it.

    def identity(self, component: str) -> str:
        """A string that changes whenever the component's weights could differ.

        For a local folder it includes each file's size and mtime, so
        regenerating or editing the weights in place invalidates caches.
        """
        path, subfolder = self.overrides.get(component, (self.base, component))
        parts = [str(Path(path).expanduser().resolve()) if Path(path).exists() else path,
                 subfolder or "", self.revision or "", self.variant or ""]
        folder = Path(path).expanduser() / (subfolder or "")
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    stat = file.stat()
                    parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)

    def load_pipeline(self, pipeline_class: Any, **components: Any) -> Any:
        """The whole pipeline from the base path, with some components replaced."""
        try:
            return pipeline_class.from_pretrained(
                self.base, revision=self.revision, variant=self.variant, **components
            )
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load the pipeline from {self.base}: {str(error).splitlines()[0]}") from None

    def load(self, loader: Any, component: str, **kwargs: Any) -> Any:
        """``loader.from_pretrained`` for one component, with a readable error."""
        path, subfolder = self.overrides.get(component, (self.base, component))
        try:
            return loader.from_pretrained(
                path, subfolder=subfolder, revision=self.revision, variant=self.variant, **kwargs
            )
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load {component} from {path}: {first_line}") from None


class ModelFamily:
    """Constants and hooks of one architecture.  Subclasses set the constants."""

    name: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    denoiser_component: ClassVar[str]  # "unet" or "transformer"
    default_lora_targets: ClassVar[tuple[str, ...]]
    default_resolution: ClassVar[int]
    # Folders whose contents shape the text embeddings (enter the cache key).
    text_components: ClassVar[tuple[str, ...]]
    # The cache stores latents already scaled, so a change of scaling means a
    # different cache; this string enters the latent cache key.
    latent_normalisation: ClassVar[str]

    def pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    # Loading ---------------------------------------------------------------
    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        raise NotImplementedError

    def load_vae(self, source: ModelSource) -> Any:
        raise NotImplementedError

    def load_denoiser(self, source: ModelSource) -> Any:
        raise NotImplementedError

    def load_noise_scheduler(self, source: ModelSource) -> Any:
        raise NotImplementedError

    def lora_targets(self, config: Any) -> tuple[str, ...]:
        """Module names the LoRA wraps: the user's list, else the family's default."""
        return tuple(config.lora_target_modules or self.default_lora_targets)

    def make_objective(self, noise_scheduler: Any, config: Any) -> Any:
        """The training objective; DDPM-style unless the family overrides it."""
        from simpletuner.training.objectives import DiffusionObjective

        return DiffusionObjective(noise_scheduler, config)

    # Encoding (what the caches store) ----------------------------------------
    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """One dict of tensors per prompt, without a batch dimension."""
        raise NotImplementedError

    def encode_images(self, vae: Any, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Latents ready for the denoiser (scaled/shifted), batch first.

        ``generators`` holds one generator per image, so each latent does not
        depend on which other images shared its batch.
        """
        raise NotImplementedError

    # Training ------------------------------------------------------------------
    def sample_conditioning(self, samples: list) -> dict[str, torch.Tensor]:
        """Per-sample conditioning derived from geometry (batch first); none by default."""
        return {}

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments for the denoiser's forward."""
        raise NotImplementedError

    def prediction(self, output: Any, noisy_latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's output in the layout of the objective's target."""
        return output.sample if hasattr(output, "sample") else output[0]

    # Saving --------------------------------------------------------------------
    def save_lora(self, output_dir: Path, denoiser_lora_state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def save_full_pipeline(self, output_dir: Path, denoiser: Any, source: ModelSource) -> None:
        """Save the base pipeline with ``denoiser`` swapped in, as a diffusers folder."""
        pipeline = source.load_pipeline(self.pipeline_class(), **{self.denoiser_component: denoiser})
        pipeline.save_pretrained(str(output_dir), safe_serialization=True)
