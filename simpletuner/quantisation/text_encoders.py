"""--text_encoder_N_precision: text encoders quantised while the text-embed cache is built.

An embedding made by a quantised encoder is a different embedding, so the
precisions enter the cache key (:func:`identity_suffix`); with every encoder
at ``no_change`` the key is what it always was, and existing caches stay valid.
"""

from __future__ import annotations

from typing import Any

from simpletuner.quantisation.precisions import NO_CHANGE


def text_encoder_precisions(config: Any) -> list[str]:
    """The precision asked for each text-encoder slot, in pipeline order (1, 2, ...)."""
    return [getattr(config, f"text_encoder_{slot}_precision", NO_CHANGE) for slot in (1, 2, 3, 4)]


def identity_suffix(config: Any) -> str:
    """What the text-cache key adds for quantised encoders; empty when none is."""
    precisions = text_encoder_precisions(config)
    if all(p == NO_CHANGE for p in precisions):
        return ""
    return "|precisions:" + ",".join(precisions)


def quantise_text_encoders(text: Any, config: Any, device: Any) -> Any:
    """Quantise the encoders of ``text`` (a ``TextEncoders``) as configured, and move them to ``device``."""
    from simpletuner.quantisation.apply import place

    for encoder, precision in zip(text.encoders, text_encoder_precisions(config)):
        if precision == NO_CHANGE:
            encoder.to(device)  # dtypes as loaded (some encoders mix them)
            continue
        # The encoders are frozen and only encode, so every Linear is quantised.
        place(encoder, precision, (), device, next(encoder.parameters()).dtype, config.quantize_via)
    return text
