"""cpu target: dense compiles of the example models reproduce PyTorch eager."""

import pytest
import torch

from optc.errors import CompileError
from optc.targets.cpu import FAST_FLAGS, CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs
from tests.conftest import lowered


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_dense_artifact_matches_eager(name):
    model, p = lowered(name)
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    assert art.vmfb[:8] and len(art.vmfb) > 1000
    err = compare(t.open(art.vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


def test_fast_flags_are_on_by_default_and_can_be_turned_off():
    t = CpuTarget()
    assert set(FAST_FLAGS) <= set(t.flags(CpuOptions()))
    assert not set(FAST_FLAGS) & set(t.flags(CpuOptions(fast=False)))
    assert "--iree-llvmcpu-target-cpu=host" in t.flags(CpuOptions())


def test_compiler_rejection_is_a_clean_error():
    _, p = lowered("mlp")
    with pytest.raises(CompileError, match="IREE llvm-cpu compile failed"):
        CpuTarget().compile(p, CpuOptions(cpu="no-such-cpu"))


def _compile_and_compare(model, p, options=None):
    t = CpuTarget()
    art = t.compile(p, options or CpuOptions())
    err = compare(t.open(art.vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err
    return art


def _probe(name):
    from optc.load import load_model
    from optc.lower import lower

    model = load_model(f"tests.e2e.probe_models:{name}")
    return model, lower(model)


def test_fast_set_compiles_a_tensor_returned_beside_its_softmax():
    """Aggressive fusion made IREE reject this ('vector.store' op write affecting ... global resources)."""
    model, p = _probe("softmax_pair")
    assert _compile_and_compare(model, p).flags_used == "fast"


def test_fast_set_compiles_a_rank_one_lowrank_mlp():
    """Aggressive fusion made this one 'exceed the stack allocation limit'."""
    from optc.api import MethodContext
    from optc.plugins.lowrank import LowRank, LowRankOptions
    from optc.verify import with_weights

    model, p = lowered("mlp")
    result = LowRank().apply(p, LowRankOptions(rank=1), MethodContext())
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    assert art.flags_used == "fast"
    got = t.open(art.vmfb, CpuOptions())(*p.example_inputs)
    assert compare(got, eager_outputs(with_weights(model.module, result.reference_weights), p.example_inputs)).max_rel <= 1e-5


def test_a_fast_set_that_fails_falls_back_to_the_safe_set(monkeypatch):
    import optc.targets.cpu as cpu

    monkeypatch.setattr(cpu, "FAST_FLAGS", (*cpu.FAST_FLAGS, "--iree-dispatch-creation-enable-aggressive-fusion=true"))
    model, p = _probe("softmax_pair")
    art = _compile_and_compare(model, p)
    assert art.flags_used.startswith("safe (fast set failed: ") and "vector.store" in art.flags_used


def test_bad_cpu_names_and_flags_show_iree_own_line():
    _, p = lowered("mlp")
    with pytest.raises(CompileError, match="Unknown CPU for target architecture"):
        CpuTarget().compile(p, CpuOptions(cpu="no-such-cpu"))
    with pytest.raises(CompileError, match="Unknown command line argument '--no-such-flag'"):
        CpuTarget().compile(p, CpuOptions(flags=("--no-such-flag",)))


@pytest.mark.parametrize("assignments", [{"cpu": ""}, {"cpu": "sky lake"}, {"flags": "O3"}])
def test_empty_or_malformed_cpu_options_are_refused(assignments):
    from optc.api import build_options
    from optc.errors import OptionError

    with pytest.raises(OptionError, match="cpu: "):
        build_options("cpu", CpuOptions, assignments)


# Of conv_kinds' five convs only the 3x3 stride-1 one with a 30x30 output is
# Winograd's (the dilated, 1x1 and strided ones never are; the 15x15 one is
# below the default minimum output size). It has a bias, which IREE's Winograd
# pass would drop: the tagged conv starts from zeros and the bias is added after.
WINOGRAD_TAG_CHECKS = """
// CHECK:      %[[ZEROS:.+]] = linalg.fill
// CHECK-NEXT: %[[CONV:.+]] = linalg.conv_2d_nchw_fchw {__winograd_conv, dilations = dense<1> {{.*}}strides = dense<1> {{.*}}outs(%[[ZEROS]] : tensor<1x8x30x30xf32>)
// CHECK-NEXT: linalg.generic {{.*}}ins(%[[CONV]], %[[BIAS:[a-z0-9_]+]] : tensor<1x8x30x30xf32>, tensor<1x8x30x30xf32>)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.addf
// CHECK-NOT:  __winograd_conv
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<2>
// CHECK-NOT:  __winograd_conv
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<1> {{.*}}tensor<8x8x1x1xf32>
// CHECK-NOT:  __winograd_conv
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<1> {{.*}}strides = dense<2>
// CHECK-NOT:  __winograd_conv
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<1> {{.*}}strides = dense<1> {{.*}} -> tensor<1x8x15x15xf32>
// CHECK-NOT:  __winograd_conv
"""
# ... and IREE's preprocessing (the fast set) turns that one, and only it, into
# Winograd's filter/input/output transforms.
WINOGRAD_PREPROCESSED_CHECKS = """
// CHECK:          iree_linalg_ext.winograd.filter_transform output_tile_size(6) kernel_size(3) {{.*}}tensor<8x4x3x3xf32>
// CHECK:          iree_linalg_ext.winograd.input_transform output_tile_size(6) kernel_size(3) {{.*}}tensor<1x4x32x32xf32>
// CHECK:          iree_linalg_ext.winograd.output_transform output_tile_size(6) kernel_size(3) {{.*}}-> tensor<1x8x30x30xf32>
// CHECK-NOT:      iree_linalg_ext.winograd
// CHECK-COUNT-4:  linalg.conv_2d_nhwc_hwcf
// CHECK-NOT:      iree_linalg_ext.winograd
"""


def _filecheck(tmp_path, checks: str, text: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "checks").write_text(checks)
    proc = subprocess.run([str(Path(sys.executable).parent / "filecheck"), str(tmp_path / "checks")], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def narrow_winograd(monkeypatch):
    """Winograd for convs of any width, so small probe models exercise the tagging
    (by default only convs of at least WINOGRAD_MIN_CHANNELS channels are tagged)."""
    import optc.targets.cpu as cpu

    monkeypatch.setattr(cpu, "WINOGRAD_MIN_CHANNELS", 2)


def test_winograd_tags_only_large_3x3_stride_1_convs_and_iree_rewrites_those(tmp_path, narrow_winograd):
    from optc.targets.cpu import WINOGRAD_MIN_OUTPUT, WINOGRAD_TAG, prepare_winograd
    from optc.targets.iree_common import run_iree_compile

    _, p = _probe("conv_kinds")
    before = p.to_text()
    prepared, tagged = prepare_winograd(p, WINOGRAD_MIN_OUTPUT)
    assert tagged == 1 and prepared is not p
    _filecheck(tmp_path, WINOGRAD_TAG_CHECKS, prepared.to_text())
    flags = CpuTarget().flags(CpuOptions(), winograd=True)
    preprocessed = run_iree_compile(prepared.to_bytecode(), "llvm-cpu", [*flags, "--compile-to=preprocessing", "--mlir-print-debuginfo=false"])
    _filecheck(tmp_path, WINOGRAD_PREPROCESSED_CHECKS, preprocessed.decode())
    assert p.to_text() == before and WINOGRAD_TAG not in before  # the program itself is left as it was
    assert prepare_winograd(p, 15)[1] == 2
    assert prepare_winograd(p, 0) == (p, 0)


def test_winograd_leaves_convs_with_few_channels_on_im2col():
    # penni's basis conv (1 input channel), a small CNN's 16 -> 32 conv: im2col; 64 -> 64: Winograd
    from optc.load import Model
    from optc.lower import lower
    from optc.targets.cpu import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_OUTPUT, winograd_convs

    class Widths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.basis = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.small = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.up = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.wide = torch.nn.Conv2d(64, 64, 3, padding=1)

        def forward(self, x):
            return self.wide(self.up(self.small(self.basis(x))))

    assert WINOGRAD_MIN_CHANNELS == 64
    p = lower(Model(Widths().eval(), (torch.randn(1, 1, 32, 32),), "widths"))
    (tagged,) = winograd_convs(p, WINOGRAD_MIN_OUTPUT)
    assert tagged.operands[1].type.shape == [64, 64, 3, 3]


def test_winograd_flags_hoist_filters_only_when_a_conv_is_tagged():
    from optc.targets.cpu import HOIST_WINOGRAD_FILTERS

    t = CpuTarget()
    assert HOIST_WINOGRAD_FILTERS in t.flags(CpuOptions(), winograd=True)
    assert HOIST_WINOGRAD_FILTERS not in t.flags(CpuOptions())
    assert HOIST_WINOGRAD_FILTERS not in t.flags(CpuOptions(fast=False), winograd=True)


@pytest.mark.parametrize("spec, winograd", [("tests.e2e.probe_models:conv_kinds", 1), ("examples.models:cnn", 28)])
def test_default_flags_with_winograd_stay_within_compile_tolerance(spec, winograd, narrow_winograd):
    """Winograd F(6x6,3x3) is not exact in float32: its artifact must still meet
    the tolerance `optc compile` checks (1e-4 relative), here with room to spare
    (conv_kinds: two biased convs; cnn: the default output threshold, a bias-free stem)."""
    from optc.load import load_model
    from optc.lower import lower
    from optc.targets.cpu import winograd_convs
    from optc.verify import DEFAULT_TOLERANCE

    model = load_model(spec)
    p = lower(model)
    assert winograd_convs(p, winograd)
    t = CpuTarget()
    opts = CpuOptions(winograd=winograd)
    art = t.compile(p, opts)
    assert art.flags_used == "fast" and art.vmfb.count(b"winograd_input_transform_") >= len(winograd_convs(p, winograd))
    err = compare(t.open(art.vmfb, opts)(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= DEFAULT_TOLERANCE / 10, err


def test_winograd_option_is_validated():
    from optc.api import build_options
    from optc.errors import OptionError

    assert build_options("cpu", CpuOptions, {"winograd": "0"}).winograd == 0
    with pytest.raises(OptionError, match="winograd"):
        build_options("cpu", CpuOptions, {"winograd": "-1"})


# ----------------------------------------------------------------- runtime driver


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_auto_driver_runs_small_models_on_the_calling_thread(name):
    from optc.targets.cpu import SYNC_MAX_MACS, auto_driver

    _, p = lowered(name)
    assert p.contraction_macs() < SYNC_MAX_MACS
    assert auto_driver(p) == "local-sync"
    assert CpuTarget().resolve_options(p, CpuOptions()).driver == "local-sync"
    assert CpuTarget().resolve_options(p, CpuOptions(driver="local-task")).driver == "local-task"  # an explicit choice stays


def test_auto_driver_keeps_an_unrolled_rnn_of_small_steps_on_the_calling_thread():
    """41 M MACs in 103 contractions of 0.4 M on average: faster on local-sync (2.15 vs 3.12 ms measured)."""
    from optc.targets.cpu import RNN_MIN_STEPS, SYNC_MAX_MACS, SYNC_MAX_MEAN_MACS, auto_driver

    _, p = lowered("lstm2_h256")
    sizes = p.contraction_sizes()
    assert sum(sizes) >= SYNC_MAX_MACS and sum(sizes) < SYNC_MAX_MEAN_MACS * len(sizes)
    assert max(len(layer.uses) for layer in p.layers()) >= RNN_MIN_STEPS  # the recurrent weights, one read per step
    assert auto_driver(p) == "local-sync"


def test_auto_driver_gives_a_cnn_of_many_small_convs_the_worker_pool():
    """Small on average but not a recurrence: lowrank on MobileNetV2-shaped ran 1.3x slower on local-sync."""
    from optc.targets.cpu import SYNC_MAX_MACS, SYNC_MAX_MEAN_MACS, auto_driver

    _, p = _probe("pointwise_stack")
    sizes = p.contraction_sizes()
    assert sum(sizes) >= SYNC_MAX_MACS and sum(sizes) < SYNC_MAX_MEAN_MACS * len(sizes)
    assert auto_driver(p) == "local-task"


def test_auto_driver_gives_a_model_of_large_contractions_the_worker_pool():
    from optc.driver import load_and_lower
    from optc.targets.cpu import SYNC_MAX_MACS, SYNC_MAX_MEAN_MACS, auto_driver

    _, p = load_and_lower("examples.models:cnn", False, (), 64)
    sizes = p.contraction_sizes()
    assert sum(sizes) >= SYNC_MAX_MACS and sum(sizes) >= SYNC_MAX_MEAN_MACS * len(sizes)
    assert auto_driver(p) == "local-task"


def test_artifact_runs_on_the_driver_its_options_name():
    model, p = lowered("mlp")
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    want = eager_outputs(model.module, p.example_inputs)
    for driver in ("local-sync", "local-task"):
        session = t.open(art.vmfb, CpuOptions(driver=driver))
        assert session.driver == driver
        assert compare(session(*p.example_inputs), want).max_rel < 1e-5
    assert t.open(art.vmfb, CpuOptions()).driver == "local-task"  # "auto" unresolved (an old artifact's metadata): the pool


def test_driver_option_is_validated():
    from optc.api import build_options
    from optc.errors import OptionError

    assert build_options("cpu", CpuOptions, {"driver": "local-sync"}).driver == "local-sync"
    with pytest.raises(OptionError, match="driver='cuda': expected one of auto, local-task, local-sync"):
        build_options("cpu", CpuOptions, {"driver": "cuda"})


def test_depthwise_convs_become_taps_of_strided_slices_and_match_eager():
    from optc.targets.cpu import depthwise_as_taps

    model, p = _probe("depthwise_kinds")
    before = p.to_text()
    assert before.count("linalg.depthwise_conv_2d_nchw_chw") == 5
    prepared = depthwise_as_taps(p)
    text = prepared.to_text()
    assert "depthwise_conv" not in text
    assert text.count("tensor.extract_slice") == 2 * (9 + 9 + 9 + 25 + 3)  # per tap: its image and its weights
    assert "[1, 2, 2, 1]" in text  # the strided conv's taps are strided slices (channels last)
    assert p.to_text() == before  # the program itself is left as it was
    _, dense = _probe("conv_kinds")
    assert depthwise_as_taps(dense) is dense
    t = CpuTarget()
    for options in (CpuOptions(), CpuOptions(fast=False)):  # taps (fast) and IREE's named op (safe)
        art = t.compile(p, options)
        err = compare(t.open(art.vmfb, options)(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
        assert err.max_rel <= 1e-5, (options, err)
