"""The ``configure.py`` wizard, one job per module.

* :mod:`terminal`: how a question reaches the user (arrow-key menus in a
  real terminal, plain typed or piped answers otherwise);
* :mod:`questions`: asking one option until the answer passes the option
  table's own coercion and the trainer's checks;
* :mod:`proposal`: precision, gradient checkpointing, batch size,
  resolution and optimizer that fit the user's memory, from the estimator;
* :mod:`preview`: a dataset folder scanned as training would see it;
* :mod:`files`: the three files, checked with the trainer's loaders and
  written all together or not at all.

The order of the questions lives in :mod:`simpletuner.cli.configure`.
"""
