"""Measures of what the model learns that do not depend on sampling: held-out evaluation loss.

``dataset.py`` says which image dataset is held out (``--eval_dataset_id``)
and which of its images are evaluated; ``fixed_noise.py`` derives the noise
and schedule positions each image is evaluated at from the run's seed;
``held_out.py`` computes and logs the loss.  The trainer only builds an
:class:`~simpletuner.evaluation.held_out.HeldOutEvaluator` and calls it at
validation steps.
"""
