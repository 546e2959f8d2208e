"""Add-ons that refine any backbone's feature list (e.g. MSCSA)."""
