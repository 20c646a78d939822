"""Check the numbers: the compiled artifact against the compressed reference
(the original PyTorch model carrying the methods' reference weights), and the
compressed reference against the original model.

Errors are reported as max absolute error and max *relative* error, the latter
normalised by the largest magnitude of the expected output (elementwise ratios
blow up near zero and say nothing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_TOLERANCE = 1e-4


@dataclass
class ErrorStats:
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def flatten_outputs(out: Any) -> list[np.ndarray]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in flatten_outputs(o)]
    if isinstance(out, dict):
        return [a for v in out.values() for a in flatten_outputs(v)]  # insertion order, as torch.export flattens
    raise TypeError(f"unsupported model output type {type(out).__name__}")


def eager_outputs(module: "torch.nn.Module", inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return flatten_outputs(module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]))


def with_weights(module: "torch.nn.Module", weights: dict[str, np.ndarray]) -> "Callable[..., Any]":
    """``module`` computing with the parameters/buffers named in ``weights``
    replaced. Nothing is copied: each call swaps the arrays in for its duration
    (``torch.func.functional_call``), so the model is never held twice."""
    if not weights:
        return module
    return _WithWeights(module, weights)


def _torch_view(array: np.ndarray, dtype: "torch.dtype") -> "torch.Tensor":
    """``array`` as a tensor of ``dtype``: a view when it already has that dtype
    (read only here; torch warns about read-only buffers)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


class _WithWeights:
    """A callable like the module, with some of its weights replaced per call."""

    def __init__(self, module: "torch.nn.Module", weights: dict[str, np.ndarray]):
        state = module.state_dict(keep_vars=True)  # the tensors themselves: no copy
        for name in weights:
            if name not in state:
                raise KeyError(f"reference weight {name!r} is not a parameter of the model")
        self.module = module
        self.weights = {name: _torch_view(array, state[name].dtype) for name, array in weights.items()}

    def __call__(self, *args: Any) -> Any:
        import torch

        return torch.func.functional_call(self.module, self.weights, args)

def compare(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> ErrorStats:
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs vs {len(expected)} expected")
    max_abs, scale = 0.0, 0.0
    for a, e in zip(actual, expected):
        a = np.asarray(a, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            raise ValueError(f"output shape {a.shape} vs expected {e.shape}")
        if a.size:
            max_abs = max(max_abs, float(np.max(np.abs(a - e))))
            scale = max(scale, float(np.max(np.abs(e))))
    return ErrorStats(max_abs=max_abs, max_rel=max_abs / scale if scale > 0 else max_abs)


@dataclass
class Verification:
    """``compile_error``: artifact vs compressed reference (must be within tolerance).
    ``compression_error``: compressed reference vs the original model (what the
    methods cost; exact methods must keep it at ~1e-6)."""

    compile_error: ErrorStats
    compression_error: ErrorStats
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.compile_error.max_rel <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "compile_error": self.compile_error.as_dict(),
            "compression_error": self.compression_error.as_dict(),
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


@dataclass
class Expected:
    """The eager outputs the artifact is checked against: the original model's
    and the compressed reference's. Computed before the compile, so that the
    methods' reference weights (a low-rank layer's dense product is as big as
    its original weight) are not held through it."""

    original: list[np.ndarray]
    reference: list[np.ndarray]


def expected_outputs(
    module: "torch.nn.Module",
    reference_weights: dict[str, np.ndarray],
    inputs: Sequence[np.ndarray],
    reference_module: "torch.nn.Module | None" = None,
) -> Expected:
    """``reference_module``, when given, is the compressed reference itself (a
    method's host re-implementation, e.g. drnet's run-time choice)."""
    original = eager_outputs(module, inputs)
    if reference_module is not None:
        reference = eager_outputs(reference_module, inputs)
    else:
        reference = eager_outputs(with_weights(module, reference_weights), inputs) if reference_weights else original
    return Expected(original, reference)


def check(compiled_outputs: Sequence[np.ndarray], expected: Expected, tolerance: float = DEFAULT_TOLERANCE) -> Verification:
    return Verification(
        compile_error=compare(compiled_outputs, expected.reference),
        compression_error=compare(expected.reference, expected.original),
        tolerance=tolerance,
    )


def verify(
    module: "torch.nn.Module",
    reference_weights: dict[str, np.ndarray],
    compiled_outputs: Sequence[np.ndarray],
    inputs: Sequence[np.ndarray],
    tolerance: float = DEFAULT_TOLERANCE,
    reference_module: "torch.nn.Module | None" = None,
) -> Verification:
    """:func:`check` against :func:`expected_outputs`, in one step."""
    return check(compiled_outputs, expected_outputs(module, reference_weights, inputs, reference_module), tolerance)
