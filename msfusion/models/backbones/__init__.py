"""Backbones: MSCAN, CEDNet, and any timm model through one adapter."""
