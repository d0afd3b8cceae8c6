"""Bundled example models built from data that packages ship (no downloads)."""
