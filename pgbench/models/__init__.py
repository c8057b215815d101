"""Policies: loading and model resolution, the tiny policies, SmolLM2, the shipped policy files."""
