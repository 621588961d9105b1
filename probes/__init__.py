"""Behavioural and causal measurements on a HookedTransformer trained on the anchor task."""

from probes.solution import Classification, classify

__all__ = ["Classification", "classify"]
