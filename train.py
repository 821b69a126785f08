#!/usr/bin/env python
"""Train a diffusion model from config/config.json (see README.md)."""

from simpletuner.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
