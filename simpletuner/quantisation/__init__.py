"""Quantised base models.

``precisions`` names every ``--base_model_precision`` choice and its backend,
``matrix`` is the one support table that validation and
``documentation/QUANTISATION.md`` read, and ``apply`` quantises a loaded
component with the backend's own library.  Only ``apply`` imports torch.
"""
