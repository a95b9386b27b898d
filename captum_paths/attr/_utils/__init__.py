"""Shared internals of the attribution methods (not public API)."""
