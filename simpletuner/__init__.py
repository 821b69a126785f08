"""simpletuner: a config-file-driven fine-tuning trainer for diffusion image models."""

__version__ = "0.1.0"
