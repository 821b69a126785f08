"""``python -m simpletuner.publish --output_dir DIR [--hub_model_id ...]``: see simpletuner/cli/publish.py."""

from simpletuner.cli.publish import main

if __name__ == "__main__":
    raise SystemExit(main())
