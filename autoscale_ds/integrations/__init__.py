"""Bridges from autoscale mixtures to training frameworks' own data APIs (e.g. megatron-core)."""
