"""Curated models with measured numbers and their provenance (knowledge, not effects)."""
