"""Compression methods (``--plugins NAME`` -> ``plugins/NAME.py``)."""
