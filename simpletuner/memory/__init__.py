"""How much memory a run will need, worked out before any weight is read.

``params``      parameters per component from safetensors headers (no weights read)
``skeleton``    the denoiser built on the meta device from its config, with the run's adapter
``activations`` what the forward pass keeps for backward, traced on the meta device
``estimate``    bytes per item for the run's options
``report``      the start-up lines, and the refusal when the estimate does not fit
"""
