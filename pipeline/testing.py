"""A kit for testing a compression method, usable from any package's pytest.

    from optc.testing import check_method

    def test_contract():
        check_method(MyMethod(), options={"keep": "0.5"}, identity={"keep": "1"})

``check_method`` runs the method on small built-in models (an MLP and a CNN
with a dense, a depthwise and a grouped convolution) and checks the contract
every optc method keeps:

- its options construct with defaults and validate (``check_options``);
- with ``identity`` settings (keep everything, full rank …) the compiled
  program reproduces the original model to 1e-5 (``check_identity``);
- the artifact compiled for the CPU reproduces the method's reference weights
  (``check_artifact``);
- the result records every layer of the model once, changed or skipped with a
  typed reason, and a reference weight in the layer's shape for each change
  (``check_report``).

Methods that need calibration data get random samples. Each helper raises
``AssertionError`` with what was wrong, so it reads as a pytest failure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from optc.api import Method, MethodContext, MethodResult, SkipReason, Status, build_options

MODELS = ("mlp", "cnn")
IDENTITY_TOLERANCE = 1e-5
ARTIFACT_TOLERANCE = 1e-4


def small_model(name: str) -> tuple[Any, tuple[Any, ...]]:
    """(module, example inputs) of a small seeded model: ``mlp`` (three linear
    layers, batch 4) or ``cnn`` (conv, depthwise conv, grouped 1×1 conv, two
    linear layers; one 3×16×16 image)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
        return model.eval(), (torch.randn(4, 64),)
    if name == "cnn":

        class Cnn(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Conv2d(3, 16, 3, padding=1)
                self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
                self.pw = nn.Conv2d(16, 16, 1, groups=2)
                self.fc1 = nn.Linear(16, 32)
                self.fc2 = nn.Linear(32, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.stem(x))
                y = y + self.pw(torch.relu(self.dw(y)))
                return self.fc2(torch.relu(self.fc1(y.mean(dim=(2, 3)))))

        return Cnn().eval(), (torch.randn(1, 3, 16, 16),)
    raise ValueError(f"no small model {name!r}; choose from {', '.join(MODELS)}")


_LOWERED: dict[str, Any] = {}


def lowered(name: str) -> tuple[Any, Any]:
    """(optc Model, Program) of :func:`small_model` ``name``; the program is a fresh copy."""
    if name not in _LOWERED:
        from optc.load import Model
        from optc.lower import lower

        module, inputs = small_model(name)
        model = Model(module, inputs, f"optc.testing:{name}")
        _LOWERED[name] = (model, lower(model))
    model, program = _LOWERED[name]
    return model, program.clone()


def synthetic_calibration(program: Any, samples: int = 32, seed: int = 0) -> Any:
    """Random normal calibration samples shaped like the program's first input."""
    from optc.calibration import Calibration, Samples
    from optc.driver import _host_runner

    shape = program.example_inputs[0].shape
    x = np.random.default_rng(seed).normal(size=(samples, *shape[1:])).astype(np.float32)
    return Calibration(Samples(Path("synthetic.npz"), [x], None), program.clone(), _host_runner)


@dataclass
class Run:
    """One method applied to one small model."""

    model: Any  # optc.load.Model: the PyTorch module and example inputs
    original: Any  # the Program before the method
    program: Any  # the Program after it
    result: MethodResult


def options_for(method: Method, options: Mapping[str, Any] | None = None) -> Any:
    """The method's options from ``{field: value}`` (values as the CLI would give them)."""
    return build_options(method.name, method.Options, {k: str(v) for k, v in (options or {}).items()})


def run_method(method: Method, options: Mapping[str, Any] | None = None, model: str = "mlp", before: Callable[[Any, MethodContext], Any] | None = None) -> Run:
    """Apply ``method`` to the small model ``model``; ``before(program, ctx)`` may
    apply earlier methods first (e.g. one whose structure this method reuses)."""
    loaded, program = lowered(model)
    ctx = MethodContext(calibration=synthetic_calibration(program) if method.needs_calibration else None)
    if before is not None:
        before(program, ctx)
    original = program.clone()
    result = method.apply(program, options_for(method, options), ctx)
    program.verify()
    return Run(loaded, original, program, result)


def compiled_outputs(program: Any) -> list[np.ndarray]:
    """The program compiled for this CPU and run on its example inputs."""
    from optc.registry import load_registry

    cpu = load_registry().target("cpu")
    options = build_options("cpu", cpu.Options, {})
    return cpu.open(cpu.compile(program, options).vmfb, options)(*program.example_inputs)


# --------------------------------------------------------------------------- checks


def check_options(method: Method) -> Any:
    """Default options construct and validate; every field is documented."""
    defaults = options_for(method)
    for f in dataclasses.fields(defaults):
        assert f.metadata.get("help"), f"{method.name}.{f.name} has no help text"
    return defaults


def check_report(run: Run) -> None:
    """Every layer of the model appears once in the result, changed (with a
    reference weight shaped like the layer's parameter) or skipped with a reason."""
    layers = list(run.original.layer_stats())
    seen = [c.layer for c in run.result.changes]
    assert sorted(seen) == sorted(layers), f"{run.result.method}: changes cover {seen}, the model's layers are {layers}"
    for c in run.result.changes:
        assert c.status in (Status.CHANGED, Status.SKIPPED), c
        if c.status == Status.SKIPPED:
            assert isinstance(c.reason, SkipReason) and c.action, f"{c.layer}: skipped without a reason"
        else:
            ref = run.result.reference_weights.get(c.layer)
            assert ref is not None, f"{c.layer}: changed but no reference weight"
            assert tuple(ref.shape) == tuple(run.original.layer_shapes[c.layer]), f"{c.layer}: reference weight {ref.shape}"
    assert set(run.result.reference_weights) <= {c.layer for c in run.result.changes if c.status == Status.CHANGED}


def check_artifact(run: Run, tolerance: float = ARTIFACT_TOLERANCE) -> Any:
    """The CPU artifact reproduces the compressed reference (the PyTorch model
    carrying the method's reference weights). Returns the verification."""
    from optc.verify import verify

    check = verify(run.model.module, run.result.reference_weights, compiled_outputs(run.program), run.program.example_inputs, tolerance)
    assert check.compile_error.max_rel <= tolerance, f"{run.result.method}: artifact vs reference {check.compile_error}"
    return check


def check_identity(method: Method, identity: Mapping[str, Any], model: str = "mlp", tolerance: float = IDENTITY_TOLERANCE) -> Run:
    """With settings that keep everything, the compiled program reproduces the
    original model to ``tolerance``, and the method still changed something."""
    from optc.verify import compare, eager_outputs

    run = run_method(method, identity, model)
    assert any(c.status == Status.CHANGED for c in run.result.changes), f"{method.name}: identity settings changed no layer"
    err = compare(compiled_outputs(run.program), eager_outputs(run.model.module, run.program.example_inputs))
    assert err.max_rel <= tolerance, f"{method.name} with {dict(identity)}: compiled vs original {err}"
    return run


def check_method(
    method: Method,
    options: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
    models: tuple[str, ...] = MODELS,
    before: Callable[[Any, MethodContext], Any] | None = None,
) -> list[Run]:
    """The whole contract on each of ``models``: options, report, artifact, and
    (when ``identity`` settings are given) exactness."""
    check_options(method)
    runs = []
    for model in models:
        run = run_method(method, options, model, before)
        check_report(run)
        check_artifact(run)
        runs.append(run)
    if identity is not None:
        check_identity(method, identity, models[0])
    return runs
