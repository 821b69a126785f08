#!/usr/bin/env python
"""Write config/config.json, multidatabackend.json and config.env by answering questions."""

from simpletuner.cli.configure import main

if __name__ == "__main__":
    raise SystemExit(main())
