"""optc: a compression compiler for PyTorch models.

torch-mlir lowers a model to linalg on tensors, compression methods (plugins)
rewrite the linalg ops, IREE compiles the result for a target, and optc
measures what was won. Heavy dependencies (torch, torch-mlir, IREE) are
imported lazily so that ``optc --help`` stays instant.
"""

__version__ = "0.1.0"
