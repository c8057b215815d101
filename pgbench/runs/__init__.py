"""Verbs over many runs: compare, suite (protocols, tuning, launchers) and gradient variance."""
