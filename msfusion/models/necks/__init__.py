"""Necks: feature pyramids that take and return ``list[Tensor]`` fine to coarse."""
