"""Backbones, add-ons, necks, heads and the task models built from them."""
