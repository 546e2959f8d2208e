"""Registered paper variants, one file per paper: each registers its models with ``@register_model``."""
