"""Attention backends (--attention_mechanism) and fused q/k/v projections (--fused_qkv_projections)."""
