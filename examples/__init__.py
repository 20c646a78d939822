"""Example models and packages for optc (importable as ``examples.*`` from the repo root)."""
