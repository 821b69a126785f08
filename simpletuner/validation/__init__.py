"""Validation images while training: prompts, the family's stock pipeline around the
live model, image files with a grid and manifest per step, tracker images and CLIP
scores.  The trainer calls :class:`~simpletuner.validation.runner.Validation` at its
step boundary and nothing else here (see documentation/VALIDATION.md)."""
