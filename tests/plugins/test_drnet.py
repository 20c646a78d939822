"""drnet: the module's switch runs the backbone at the chosen resolution, the
switch is in the IR, the predictor trains deterministically, bad input is refused,
and the e2e compile on the multi-scale digits reports per-resolution shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from optc.api import MethodContext, build_options
from optc.calibration import Samples
from optc.errors import InputError, OptionError
from optc.load import load_model
from optc.lower import lower
from optc.plugins.drnet import Drnet, Predictor, build_module, resize, resize_matrix, train_predictor
from optc.registry import load_registry
from optc.variants import lower_at_shapes
from tests.conftest import filecheck

RESOLUTIONS = [8, 12, 16]  # ascending, as the module orders them


class TinyCNN(nn.Module):
    """Two convs and global average pooling: takes any image size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x.unsqueeze(1)))))
        return self.fc(h.mean(dim=(2, 3)))


class FlattenCNN(nn.Module):
    """A conv then a flatten into a fixed-size linear layer: only its own size fits."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c1(x.unsqueeze(1))).flatten(1))


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def tiny():
    torch.manual_seed(0)
    return TinyCNN().eval(), (torch.randn(2, 16, 16),)


def flatten_cnn():
    torch.manual_seed(0)
    return FlattenCNN().eval(), (torch.randn(1, 16, 16),)


def two_inputs():
    return TwoInputs(), (torch.randn(1, 16, 16), torch.randn(1, 16, 16))


class _Calib:
    def __init__(self, samples: Samples):
        self.samples = samples


def _ctx(model, n: int = 32, labels: bool = False) -> MethodContext:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + tuple(model.example_inputs[0].shape[1:])).astype(np.float32)
    y = rng.integers(0, 3, n) if labels else None
    return MethodContext(calibration=_Calib(Samples(Path("calib.npz"), [x], y)), model=model)  # type: ignore[arg-type]


def _forced(k: int, features: int) -> Predictor:
    """A predictor that always scores resolution ``k`` highest."""
    b2 = np.zeros(len(RESOLUTIONS), np.float32)
    b2[k] = 10.0
    return Predictor(np.zeros((features, 4), np.float32), np.zeros(4, np.float32), np.zeros((4, len(RESOLUTIONS)), np.float32), b2)


def _run(program, x: np.ndarray) -> np.ndarray:
    cpu = load_registry().target("cpu")
    options = build_options("cpu", cpu.Options, {})
    return cpu.open(cpu.compile(program, options).vmfb, options)(x)[0]


def test_resize_matrix_is_torch_interpolate():
    x = torch.randn(3, 16, 16)
    expected = nn.functional.interpolate(x.unsqueeze(1), size=(12, 12), mode="bilinear", antialias=True, align_corners=False).squeeze(1)
    assert torch.allclose(resize(x, 12), expected, atol=1e-5)
    assert resize_matrix(16, 16).tolist() == np.eye(16).tolist()


@pytest.mark.parametrize("k", range(len(RESOLUTIONS)))
def test_forced_choice_equals_backbone_at_that_resolution(k):
    model = load_model("tests.plugins.test_drnet:tiny")
    program = lower(model)
    variants = lower_at_shapes(model, [(2, r, r) for r in RESOLUTIONS])
    build_module(program, variants, RESOLUTIONS, _forced(k, 8 * 8), predictor_size=8)
    program.verify()
    x = np.random.default_rng(1).standard_normal((2, 16, 16)).astype(np.float32)
    got = _run(program, x)
    with torch.no_grad():
        expected = model.module(resize(torch.from_numpy(x), RESOLUTIONS[k])).numpy()
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


@pytest.mark.parametrize("method,opts,changed,k", [
    ("bcr", {"block": "4", "col_keep": "0.5"}, {"c1.weight", "c2.weight"}, 0),  # fc's 3 rows do not fit block 4
    ("bcr", {"block": "4", "col_keep": "0.5"}, {"c1.weight", "c2.weight"}, len(RESOLUTIONS) - 1),
    ("lowrank", {"rank": "2"}, {"c1.weight", "c2.weight", "fc.weight"}, 1),
])
def test_a_method_after_drnet_compresses_every_variant_alike(method, opts, changed, k):
    """drnet,bcr / drnet,lowrank: one decision per layer rewrites its copy in every
    resolution variant (one stored copy of each new weight), every variant's MACs
    shrink, and the module forced to a resolution equals the compressed backbone there."""
    from optc.verify import with_weights

    model = load_model("tests.plugins.test_drnet:tiny")
    program = lower(model)
    variants = lower_at_shapes(model, [(2, r, r) for r in RESOLUTIONS])
    dense = [v.contraction_macs() for v in variants]
    build_module(program, variants, RESOLUTIONS, _forced(k, 8 * 8), predictor_size=8)
    m = load_registry().method(method)
    result = m.apply(program, build_options(method, m.Options, opts), MethodContext())
    program.verify()
    assert {c.layer for c in result.changes if c.status == "changed"} == changed
    views = program.variants()
    assert len(views) == len(RESOLUTIONS)
    new = [{layer: {p for p in v.func_params() if program.layer_of(p) == layer} for layer in changed} for v in views]
    for view, before, params in zip(views, dense, new):
        assert view.contraction_macs() < before
        assert params == new[0] and all(ps and all(program.rewritten(p) for p in ps) for ps in params.values())
    assert not any(program.layer_of(p) in changed and not program.rewritten(p) for p in program.params)  # no original left
    x = np.random.default_rng(1).standard_normal((2, 16, 16)).astype(np.float32)
    got = _run(program, x)
    at_k = resize(torch.from_numpy(x), RESOLUTIONS[k])
    with torch.no_grad():
        expected = with_weights(model.module, result.reference_weights)(at_k).numpy()
        uncompressed = model.module(at_k).numpy()
    assert not np.allclose(expected, uncompressed, atol=1e-3)  # the method changed the outputs
    assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


CHECKS = """
// CHECK-DAG: func.func private @main_2x8x8(%{{.*}}: tensor<2x8x8xf32>)
// CHECK-DAG: func.func private @main_2x12x12(%{{.*}}: tensor<2x12x12xf32>)
// CHECK-DAG: func.func private @main_2x16x16(%{{.*}}: tensor<2x16x16xf32>)
// CHECK-LABEL: func.func @main(%{{.*}}: tensor<2x16x16xf32>) -> tensor<2x3xf32>
// CHECK: linalg.matmul
// CHECK: %[[IDX:.*]] = tensor.extract %{{.*}}[] : tensor<i64>
// CHECK: %[[I32:.*]] = arith.trunci %[[IDX]] : i64 to i32
// CHECK: cf.switch %[[I32]] : i32, [
// CHECK-NEXT: default: ^[[FULL:bb[0-9]+]],
// CHECK-NEXT: 0: ^[[LOW:bb[0-9]+]],
// CHECK-NEXT: 1: ^[[MID:bb[0-9]+]]
// CHECK: ^[[LOW]]:
// CHECK: call @main_2x8x8(%{{.*}}) : (tensor<2x8x8xf32>)
// CHECK-NEXT: return
// CHECK: ^[[MID]]:
// CHECK: call @main_2x12x12(%{{.*}}) : (tensor<2x12x12xf32>)
// CHECK-NEXT: return
// CHECK: ^[[FULL]]:
// CHECK: call @main_2x16x16(%{{.*}}) : (tensor<2x16x16xf32>)
// CHECK-NEXT: return
"""


def test_switch_in_ir_filecheck(tmp_path):
    model = load_model("tests.plugins.test_drnet:tiny")
    program = lower(model)
    options = build_options("drnet", Drnet.Options, {"resolutions": "16,12,8", "epochs": "20"})
    result = Drnet().apply(program, options, _ctx(model))
    program.verify()
    filecheck(tmp_path, CHECKS, program.to_text())
    details = result.changes[0].details
    assert details["resolutions"] == RESOLUTIONS
    assert details["predictor_macs"] > 0
    assert abs(sum(details["calib_choice_shares"].values()) - 1) < 1e-9


def test_predictor_training_is_deterministic():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((64, 16)).astype(np.float32)
    labels = rng.integers(0, 3, 64)
    a = train_predictor(features, labels, 3, hidden=8, epochs=30, seed=3)
    b = train_predictor(features, labels, 3, hidden=8, epochs=30, seed=3)
    c = train_predictor(features, labels, 3, hidden=8, epochs=30, seed=4)
    for name in ("w1", "b1", "w2", "b2"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.w1, c.w1)


def test_one_resolution_is_refused():
    with pytest.raises(OptionError, match="at least two"):
        build_options("drnet", Drnet.Options, {"resolutions": "16"})


def test_largest_must_be_the_model_size():
    model = load_model("tests.plugins.test_drnet:tiny")
    options = build_options("drnet", Drnet.Options, {"resolutions": "12,8"})
    with pytest.raises(OptionError, match="model's own size 16"):
        Drnet().apply(lower(model), options, _ctx(model))


def test_fixed_size_backbone_is_refused_with_a_hint():
    model = load_model("tests.plugins.test_drnet:flatten_cnn")
    options = build_options("drnet", Drnet.Options, {"resolutions": "16,8"})
    with pytest.raises(InputError, match="global pooling"):
        Drnet().apply(lower(model), options, _ctx(model))


def test_several_inputs_are_refused():
    model = load_model("tests.plugins.test_drnet:two_inputs")
    options = build_options("drnet", Drnet.Options, {"resolutions": "16,8"})
    with pytest.raises(InputError, match="2 inputs"):
        Drnet().apply(lower(model), options, _ctx(model))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "optc"), *args], capture_output=True, text=True)


def test_cli_without_calib_fails_cleanly(tmp_path, multiscale_digits):
    out = tmp_path / "m.vmfb"
    proc = _cli("compile", "--plugins", "drnet", "--opt", "drnet.resolutions=32,16", str(multiscale_digits["cnn"]), "-o", str(out))
    assert proc.returncode != 0
    assert "needs calibration data" in proc.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_e2e_multiscale_digits_reports_shares(tmp_path, multiscale_digits):
    out = tmp_path / "drnet.vmfb"
    proc = _cli("compile", "--quiet", "--plugins", "drnet", "--opt", "drnet.resolutions=32,24,16", "--opt", "drnet.epochs=50",
                "--calib", str(multiscale_digits["calib"]), "--eval", str(multiscale_digits["test"]), str(multiscale_digits["cnn"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verification"]["passed"]
    drnet = report["accuracy"]["drnet"]
    assert set(drnet["resolution_shares"]) == {"16", "24", "32"}
    assert abs(sum(drnet["resolution_shares"].values()) - 1) < 1e-9
    assert 0 < drnet["macs_per_image"] <= drnet["full_resolution_macs_per_image"] + report["methods"][0]["changes"][0]["details"]["predictor_macs"]
    # the artifact's top-1 is the host re-implementation's (same choices, same backbone)
    assert report["accuracy"]["artifact"] == report["accuracy"]["compressed_reference"]
    # totals count the variants the switch calls, each shared weight once, and give a
    # MAC range instead of one number (the public function alone has only the predictor)
    t = report["totals"]
    added = report["methods"][0]["changes"][0]["details"]["predictor_macs"] + 10**4  # predictor + resize matrices, not 3 backbones
    assert t["params_before"] <= t["params_after"] <= t["params_before"] + added
    assert t["macs_after"] is None and t["flop_reduction"] is None
    d = t["dynamic"]
    assert len(d["callee_macs"]) == 3 and d["macs_min"] < d["macs_max"]
    assert d["macs_max"] >= t["macs_before"]  # the full-resolution variant plus the predictor
    assert {r["layer"]: r["macs_after"] for r in report["layers"]} == {r["layer"]: r["macs_before"] for r in report["layers"]}
    assert "chosen per input at run time" in proc.stdout and "Traceback" not in proc.stderr

