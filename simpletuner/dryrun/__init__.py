"""``--dry_run``: everything a run does before it loads weights, reported, then stop.

:func:`simpletuner.dryrun.run.dry_run` prints the resolved config, the
checks, the datasets, the caches, the memory and disk estimates and the step
arithmetic, and returns 0 when the run would start, 2 (with every reason)
when it would not.  Nothing of the user's is changed: no image is moved, no
dataset setting recorded, no checkpoint folder tidied.
"""
