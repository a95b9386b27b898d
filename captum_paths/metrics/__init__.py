"""Evaluation protocols for attributions (any Captum attribution, ours or Captum's own)."""
__all__ = []
