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

from simpletuner.errors import ConfigError, ModelError


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
    # A single-file checkpoint (--pretrained_model_name_or_path model.safetensors):
    # the denoiser, and the VAE where the file holds one, load from it through
    # diffusers' from_single_file; ``base`` then only supplies the configs and
    # the parts the file lacks (families/flavours.py says which folder or id).
    single_file: Optional[str] = None

    @classmethod
    def from_config(cls, config: Any, family: Optional["ModelFamily"] = None) -> "ModelSource":
        from simpletuner.families.flavours import is_single_file, single_file_config_source

        base, single_file = config.pretrained_model_name_or_path, None
        if is_single_file(base) and family is not None:
            base, single_file = single_file_config_source(config, family), base
        source = cls(
            base=base,
            revision=config.revision,
            variant=config.variant,
            single_file=single_file,
        )
        # A separate component folder holds that component at its root unless
        # its --pretrained_*_subfolder says otherwise (e.g. a whole pipeline).
        for component in ("vae", "unet", "transformer"):
            path = getattr(config, f"pretrained_{component}_model_name_or_path", None)
            subfolder = getattr(config, f"pretrained_{component}_subfolder", None)
            if path:
                source.overrides[component] = (path, subfolder)
            elif subfolder:
                source.overrides[component] = (source.base, subfolder)
        t5 = getattr(config, "pretrained_t5_model_name_or_path", None)
        if t5 and family is not None:
            if not family.t5_components:
                raise ConfigError(
                    f"--pretrained_t5_model_name_or_path: --model_family={family.name} has no T5 text encoder"
                )
            # The T5 folder is laid out like the base model: same subfolder names.
            for component in family.t5_components:
                source.overrides[component] = (t5, component)
        return source

    def check(self, family: Optional["ModelFamily"] = None) -> None:
        """Fail early, in words, for a model that is not there or not ``family``'s.

        A local folder must be a diffusers model folder; a Hub id must be cached
        or reachable; the folder's model_index.json must match the family
        (see families/model_folder.py).
        """
        if self.single_file is not None:
            from simpletuner.families.model_folder import check_single_file

            check_single_file(self, family)
            return
        path = Path(self.base).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"--pretrained_model_name_or_path={self.base}: folder has no model_index.json; "
                    "point it at a diffusers model folder (the one containing unet/, vae/, ...)"
                )
        elif path.exists():
            raise ModelError(f"--pretrained_model_name_or_path={self.base}: is not a folder or a file")
        elif self.base.startswith((".", "/", "~")):
            raise ModelError(f"--pretrained_model_name_or_path={self.base}: no such folder")
        from simpletuner.families.model_folder import check_model_folder

        check_model_folder(self, family)

    def identity(self, component: str) -> str:
        """A string that changes whenever the component's weights could differ.

        For a local folder it includes each file's size and mtime, so
        regenerating or editing the weights in place invalidates caches.
        """
        if self.from_file(component):
            stat = Path(self.single_file).expanduser().stat()
            return f"{Path(self.single_file).expanduser().resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
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

    def local_folder(self, component: str) -> Optional[Path]:
        """The component's folder on this machine; None for a Hub id or the single file."""
        if self.from_file(component):
            return None
        path, subfolder = self.overrides.get(component, (self.base, component))
        folder = Path(path).expanduser() / (subfolder or "")
        return folder if folder.is_dir() else None

    def from_file(self, component: str) -> bool:
        """The component loads from the single-file checkpoint (not overridden, and in the file)."""
        if self.single_file is None or component in self.overrides:
            return False
        from simpletuner.families.model_folder import single_file_components

        return component in single_file_components(self.single_file)

    def load_pipeline(self, pipeline_class: Any, **components: Any) -> Any:
        """The whole pipeline from the base path, with some components replaced."""
        if "vae" not in components and self.from_file("vae"):  # the callers pass the denoiser
            from diffusers import AutoencoderKL

            components["vae"] = self.load(AutoencoderKL, "vae")
        try:
            return pipeline_class.from_pretrained(
                self.base, revision=self.revision, variant=self.variant, **components
            )
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load the pipeline from {self.base}: {str(error).splitlines()[0]}") from None

    def load(self, loader: Any, component: str, **kwargs: Any) -> Any:
        """``loader.from_pretrained`` for one component, with a readable error."""
        if self.from_file(component):
            return self._load_from_file(loader, component, **kwargs)
        path, subfolder = self.overrides.get(component, (self.base, component))
        try:
            return loader.from_pretrained(
                path, subfolder=subfolder, revision=self.revision, variant=self.variant, **kwargs
            )
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load {component} from {path}: {first_line}") from None

    def _load_from_file(self, loader: Any, component: str, **kwargs: Any) -> Any:
        """``loader.from_single_file`` with the configs from ``base`` (never fetched from the file's guess)."""
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        try:
            return loader.from_single_file(
                str(Path(self.single_file).expanduser()), config=self.base, subfolder=component,
                revision=self.revision, **kwargs,
            )
        except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load {component} from the single file {self.single_file}: {first_line}") from None


class ModelFamily:
    """Constants and hooks of one architecture.  Subclasses set the constants."""

    name: ClassVar[str]
    # --model_flavour's names -> Hub ids (SimpleTuner's); the first is the family's default.
    flavours: ClassVar[dict[str, str]] = {}
    # Key prefixes that show a single-file checkpoint holds this family's denoiser;
    # empty where diffusers cannot load the family from a single file.
    single_file_markers: ClassVar[tuple[str, ...]] = ()
    pipeline_class_name: ClassVar[str]
    denoiser_component: ClassVar[str]  # "unet" or "transformer"
    denoiser_class_name: ClassVar[str]  # the diffusers class, e.g. "UNet2DConditionModel"
    # Class names of the denoiser's repeated blocks, each sharded as one unit under
    # --fsdp_enable (--fsdp_transformer_layer_cls_to_wrap replaces them).
    fsdp_block_class_names: ClassVar[tuple[str, ...]] = ()
    noise_scheduler_class_name: ClassVar[str] = "DDPMScheduler"
    default_lora_targets: ClassVar[tuple[str, ...]]
    default_resolution: ClassVar[int]
    # Folders whose contents shape the text embeddings (enter the cache key).
    text_components: ClassVar[tuple[str, ...]]
    # The T5 encoder's and tokenizer's folders, which
    # --pretrained_t5_model_name_or_path replaces; empty for families without T5.
    t5_components: ClassVar[tuple[str, ...]] = ()
    # The cache stores latents already scaled, so a change of scaling means a
    # different cache; this string enters the latent cache key.
    latent_normalisation: ClassVar[str]
    # Pixels per latent cell along each side (every family here uses an 8x VAE).
    vae_scale_factor: ClassVar[int] = 8
    # The stock VAE's activations exceed fp16's range, so encoding in fp16
    # gives inf/NaN latents (--vae_dtype fp16 warns unless the VAE is replaced).
    vae_overflows_in_fp16: ClassVar[bool] = False
    # Prefix of the kohya-layout LoRA names (--lora_format comfyui) that this
    # family's diffusers loader converts back; None where it cannot load them.
    kohya_lora_prefix: ClassVar[Optional[str]] = None
    # Class names of the denoiser's attention modules, which LyCORIS presets
    # target by name; a preset naming several families' classes is expected to
    # miss the others' (see training/lycoris_adapter.py).
    attention_class_names: ClassVar[tuple[str, ...]] = ("Attention",)
    # Whether the denoiser's attention processors call diffusers' attention
    # dispatcher (so --attention_mechanism backends reach them) rather than
    # torch's scaled_dot_product_attention directly.
    attention_dispatch: ClassVar[bool] = False
    # Module-name patterns (fnmatch) of the denoiser that --base_model_precision
    # leaves unquantised: each family names its embedders, norms and output
    # projections; the backends skip non-Linear layers on their own.
    quantisation_exclude: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        # The run's options, for families whose inputs depend on them (Flux's
        # guidance value, SD3's T5 skipping); None gives the family defaults.
        self.config = config

    def option(self, name: str, default: Any) -> Any:
        """The run's value of option ``name``, or ``default`` without a config."""
        # A partial config (a test's namespace) falls back to the default too.
        return default if self.config is None else getattr(self.config, name, default)

    def text_settings(self) -> str:
        """Options that change this family's text embeds (e.g. --t5_padding), as a
        string for the text-embed cache key; empty when all are at their defaults."""
        return ""

    def single_file_problem(self, path: str, keys: list[str]) -> Optional[str]:
        """What keeps diffusers from loading this family's single file at ``path`` (tensor
        names ``keys``), said before anything is loaded; None when nothing known does."""
        return None

    def ignored_for_model(self) -> tuple[str, ...]:
        """One line per option set to a value that has no effect on the model found (known only
        once :meth:`model_index_problem` has read it; config/inert.py names the rest at start-up)."""
        return ()

    def model_index_problem(self, index: dict[str, Any], overridden: set[str]) -> Optional[str]:
        """What in a model folder's model_index.json says it is not this family's, or None.

        ``overridden`` names the components taken from elsewhere, which the
        folder need not hold.
        """
        found = index.get("_class_name")
        if found != self.pipeline_class_name:
            from simpletuner.families.registry import family_for_pipeline

            other = family_for_pipeline(found)
            what = f"a {found} (a --model_family {other} model)" if other else f"a {found or 'pipeline of unknown class'}"
            hint = f"use --model_family {other}, or " if other else ""
            return (f"holds {what}, not the {self.pipeline_class_name} that --model_family={self.name} trains; "
                    f"{hint}point it at a model folder of that family")
        entry = index.get(self.denoiser_component)
        denoiser = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if self.denoiser_component not in overridden and denoiser != self.denoiser_class_name:
            return (f"its {self.denoiser_component} is {denoiser or 'missing'}, not the {self.denoiser_class_name} "
                    f"that --model_family={self.name} trains")
        return None

    def pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    # Loading ---------------------------------------------------------------
    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        raise NotImplementedError

    def load_vae(self, source: ModelSource, dtype: torch.dtype = torch.float32) -> Any:
        from diffusers import AutoencoderKL

        # Encoding runs once per cache entry, so by default it runs in fp32: the
        # SDXL VAE overflows in fp16 and the cache stores fp32 latents anyway.
        # --vae_dtype picks another dtype (caching/vae_dtype.py).
        vae = source.load(AutoencoderKL, "vae", torch_dtype=dtype)
        return vae.requires_grad_(False).eval()

    def load_denoiser(self, source: ModelSource) -> Any:
        import diffusers

        denoiser = source.load(getattr(diffusers, self.denoiser_class_name), self.denoiser_component)
        self.denoiser_loaded(denoiser)
        return denoiser

    def denoiser_loaded(self, denoiser: Any) -> None:
        """Note what the family needs from the denoiser's config (real or meta-device)."""

    def weight_components(self) -> tuple[str, ...]:
        """Folders holding weights: the text encoders, the VAE, the denoiser."""
        encoders = tuple(c for c in self.text_components if not c.startswith("tokenizer"))
        return encoders + ("vae", self.denoiser_component)

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        """Cached-text tensors of the shapes a batch holds (on the current default
        device, the meta device for the memory estimate), for ``model_inputs``."""
        raise NotImplementedError

    def load_noise_scheduler(self, source: ModelSource) -> Any:
        """The training scheduler, read from the pipeline's scheduler config.

        Pipelines ship an inference sampler (PNDM, DDIM, Euler, DPM-Solver);
        training needs only its betas, timestep count and prediction type,
        which DDPMScheduler (or the flow-matching scheduler) reads from the
        same config.
        """
        import diffusers

        return source.load(getattr(diffusers, self.noise_scheduler_class_name), "scheduler")

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

    # The text-encoder modules --train_text_encoder gives LoRA layers; empty
    # where the family does not support it (config/rules.py refuses it there).
    text_encoder_lora_targets: ClassVar[tuple[str, ...]] = ()

    def trainable_text_embeds(self, text: TextEncoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The batch's text inputs, as encode_text makes them but batched, on the
        encoders' device and with gradients (--train_text_encoder)."""
        raise NotImplementedError

    def encode_images(self, vae: Any, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Latents ready for the denoiser, batch first: the inverse of the
        pipeline's decode (``latents / scaling_factor + shift_factor``).

        ``generators`` holds one generator per image, so each latent does not
        depend on which other images shared its batch.
        """
        with torch.no_grad():
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generators)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    # Training ------------------------------------------------------------------
    def sample_conditioning(self, samples: list) -> dict[str, torch.Tensor]:
        """Per-sample conditioning derived from geometry (batch first); none by default."""
        return {}

    def random_conditioning(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Conditioning drawn at random per training batch (from the trainer's generator, so a
        resumed run repeats it), merged into the batch ``model_inputs`` reads; none by default."""
        return {}

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments for the denoiser's forward."""
        raise NotImplementedError

    def prediction(self, output: Any, noisy_latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's output in the layout of the objective's target."""
        return output.sample if hasattr(output, "sample") else output[0]

    # Validation ------------------------------------------------------------------
    def validation_inputs(self, positive: dict[str, torch.Tensor],
                          negative: Optional[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Keyword arguments of the pipeline's ``__call__`` for one validation image.

        ``positive``/``negative`` are text-embed cache entries as batches of one;
        their names are the pipeline's own (``prompt_embeds``, ...), so the
        negative ones take the ``negative_`` prefix the pipelines use.
        """
        inputs: dict[str, Any] = dict(positive)
        if negative is not None:
            inputs.update({f"negative_{name}": value for name, value in negative.items()})
        inputs["guidance_scale"] = self.option("validation_guidance", 7.5)
        return inputs

    def validation_pipeline_class(self) -> Any:
        """The pipeline class validation images are drawn with; the family's own unless a mode needs another."""
        return self.pipeline_class()

    def pipeline_settings(self) -> dict[str, Any]:
        """Optional constructor arguments the validation pipeline needs for this model's layout."""
        return {}

    def render_validation(self, pipeline: Any, inputs: dict[str, Any]) -> Any:
        """The pipeline's first image for ``inputs``."""
        return pipeline(**inputs).images[0]

    # Saving --------------------------------------------------------------------
    def save_lora(self, output_dir: Path, denoiser_lora_state: dict[str, torch.Tensor],
                  text_encoder_states: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> None:
        """The LoRA in the key layout --lora_format names (text encoders' LoRAs: diffusers layout only)."""
        if self.option("lora_format", "diffusers") == "comfyui":
            from simpletuner.training.lora_formats import save_kohya_lora

            save_kohya_lora(output_dir, denoiser_lora_state, self.kohya_lora_prefix, self.config)
        else:
            # Families whose text encoders do not train keep the two-argument form.
            extra = (text_encoder_states,) if text_encoder_states else ()
            self.save_diffusers_lora(output_dir, denoiser_lora_state, *extra)

    def save_diffusers_lora(self, output_dir: Path, denoiser_lora_state: dict[str, torch.Tensor],
                            text_encoder_states: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> None:
        """diffusers-format LoRA through the pipeline's own save_lora_weights.

        ``text_encoder_states`` ({component: diffusers-layout state}) go in as
        ``<component>_lora_layers``, which load_lora_weights gives the encoders.
        """
        from simpletuner.training.lora_formats import adapter_metadata

        states = {self.denoiser_component: denoiser_lora_state, **(text_encoder_states or {})}
        layers: dict[str, Any] = {}
        for component, state in states.items():
            layers[f"{component}_lora_layers"] = state
            # Without rank and alpha in the header the loader assumes alpha = rank.
            layers[f"{component}_lora_adapter_metadata"] = adapter_metadata(self.config, state)
        self.pipeline_class().save_lora_weights(save_directory=str(output_dir), safe_serialization=True, **layers)

    def load_lora(self, pipeline: Any, folder: Path) -> None:
        """Load a LoRA that ``save_lora`` wrote into ``folder`` into ``pipeline``."""
        pipeline.load_lora_weights(str(folder))

    def overridden_components(self, source: ModelSource) -> dict[str, Any]:
        """Pipeline components the run took from elsewhere than the base model
        (e.g. --pretrained_t5_model_name_or_path), so a saved pipeline keeps them."""
        return {}

    def save_full_pipeline(self, output_dir: Path, denoiser: Any, source: ModelSource,
                           text_encoders: Optional[dict[str, Any]] = None) -> None:
        """Save the base pipeline with ``denoiser`` (and any trained ``text_encoders``,
        {component: encoder}) swapped in, as a diffusers folder."""
        from simpletuner.training.noise_schedule import inference_scheduler

        components = {**self.overridden_components(source), self.denoiser_component: denoiser,
                      **(text_encoders or {})}
        if "vae" in source.overrides:  # the saved pipeline keeps the VAE the latents came from
            components["vae"] = self.load_vae(source)
        pipeline = source.load_pipeline(self.pipeline_class(), **components)
        # A pipeline trained with another prediction type or zero terminal SNR
        # must sample that way too, so its scheduler follows the run's options.
        pipeline.scheduler = inference_scheduler(
            pipeline.scheduler, self.option("prediction_type", None), self.option("rescale_betas_zero_snr", False)
        )
        pipeline.save_pretrained(str(output_dir), safe_serialization=True)


class FlowMatchingFamily(ModelFamily):
    """A family trained by flow matching (rectified flow) on 2x2-patched latents."""

    noise_scheduler_class_name = "FlowMatchEulerDiscreteScheduler"
    # 2x2 patches: one image token per four latent pixels (resolution-dependent shift).
    tokens_per_latent_pixel: ClassVar[float] = 0.25

    def make_objective(self, noise_scheduler: Any, config: Any) -> Any:
        from simpletuner.training.flow_matching import FlowMatchingObjective

        return FlowMatchingObjective(noise_scheduler, config, tokens_per_latent_pixel=self.tokens_per_latent_pixel)
