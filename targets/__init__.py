"""Compile targets (``--target NAME`` -> ``targets/NAME.py``)."""
