"""A small captioned image dataset, generated, for the demo and the tests.

Each image is a coloured shape on a plain background, in one of several
aspect ratios, with a ``.txt`` caption that describes it, so that captions
and pixels agree and buckets of different shapes exist.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square")
# (width, height): landscape, portrait, square, so pixel_area bucketing yields 3 buckets.
DEFAULT_SIZES = ((96, 64), (64, 96), (80, 80))


def make_demo_dataset(
    folder: Path, count: int = 24, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, seed: int = 0
) -> Path:
    """Write ``count`` PNG images with matching ``.txt`` captions into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        colour = rng.choice(sorted(COLOURS))
        background = rng.choice(sorted(BACKGROUNDS))
        shape = SHAPES[index % len(SHAPES)]
        image = Image.new("RGB", (width, height), BACKGROUNDS[background])
        draw = ImageDraw.Draw(image)
        side = min(width, height) // 2
        left = rng.randrange(0, width - side + 1)
        top = rng.randrange(0, height - side + 1)
        box = (left, top, left + side, top + side)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        stem = f"{shape}_{index:03d}"
        image.save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(f"a {colour} {shape} on a {background} background\n", encoding="utf-8")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a small generated image dataset with captions.")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_demo_dataset(args.output_dir, args.count, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
