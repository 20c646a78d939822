"""cpu target: dense compiles of the example models reproduce PyTorch eager."""

import pytest
import torch

from optc.errors import CompileError
from optc.targets.cpu import FAST_FLAGS, CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs
from tests.conftest import filecheck, lowered


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


def _compile_rank_one_mlp():
    """The MLP after lowrank at rank 1, compiled and compared with eager on its reference weights."""
    from optc.api import MethodContext
    from optc.plugins.lowrank import LowRank, LowRankOptions
    from optc.verify import with_weights

    model, p = lowered("mlp")
    result = LowRank().apply(p, LowRankOptions(rank=1), MethodContext())
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    got = t.open(art.vmfb, CpuOptions())(*p.example_inputs)
    assert compare(got, eager_outputs(with_weights(model.module, result.reference_weights), p.example_inputs)).max_rel <= 1e-5
    return art


def test_fast_set_compiles_a_rank_one_lowrank_mlp():
    """Aggressive fusion made this one 'exceed the stack allocation limit'."""
    assert _compile_rank_one_mlp().flags_used == "fast"


def test_a_fast_set_that_fails_falls_back_to_the_safe_set(monkeypatch):
    import optc.targets.cpu as cpu

    monkeypatch.setattr(cpu, "FAST_FLAGS", (*cpu.FAST_FLAGS, "--iree-dispatch-creation-enable-aggressive-fusion=true"))
    art = _compile_rank_one_mlp()
    assert art.flags_used.startswith("safe (fast set failed: ") and "exceeded stack allocation limit" in art.flags_used


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


# Of conv_kinds' five convs the 3x3 stride-1 ones are Winograd's (the dilated,
# 1x1 and strided ones never are): the 30x30 one with 6x6 output tiles (5x5 of
# them, 8x8 points each: 64 products of 25 tiles × 4 channels by 4×8), the
# 15x15 one with 4x4 tiles (4x4 of them, padded from 17x17 to 18x18; 36
# products). Both are biased: the bias is added to the cut-back output.
WINOGRAD_CHECKS = """
// CHECK:      linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<64x25x4xf32>, tensor<64x4x8xf32>) outs(%{{.*}} : tensor<64x25x8xf32>)
// CHECK:      tensor.extract_slice %{{.*}}[0, 0, 0, 0] [1, 30, 30, 8] [1, 1, 1, 1] : tensor<1x30x30x8xf32>
// CHECK:      arith.addf
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<2>
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<1> {{.*}}tensor<8x8x1x1xf32>
// CHECK:      linalg.conv_2d_nchw_fchw {dilations = dense<1> {{.*}}strides = dense<2>
// CHECK:      tensor.pad %{{.*}} low[0, 0, 0, 0] high[0, 1, 1, 0]
// CHECK:      linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<36x16x8xf32>, tensor<36x8x8xf32>) outs(%{{.*}} : tensor<36x16x8xf32>)
// CHECK:      tensor.extract_slice %{{.*}}[0, 0, 0, 0] [1, 15, 15, 8] [1, 1, 1, 1] : tensor<1x16x16x8xf32>
// CHECK-NOT:  linalg.conv_2d_nchw_fchw
// CHECK-NOT:  linalg.batch_matmul
"""


@pytest.fixture
def narrow_winograd(monkeypatch):
    """Winograd for convs of any width, so small probe models exercise it (by
    default only convs of at least WINOGRAD_MIN_CHANNELS inputs are rewritten)."""
    import optc.targets.cpu as cpu

    monkeypatch.setattr(cpu, "WINOGRAD_MIN_CHANNELS", 2)
    monkeypatch.setattr(cpu, "WINOGRAD_MIN_OUT_CHANNELS", 2)


def test_winograd_rewrites_only_3x3_stride_1_convs_with_the_tile_size_for_their_output(tmp_path, narrow_winograd):
    from optc.targets.cpu import WINOGRAD_MIN_OUTPUT, winograd_as_linalg

    _, p = _probe("conv_kinds")
    before = p.to_text()
    prepared, rewritten = winograd_as_linalg(p, WINOGRAD_MIN_OUTPUT)
    assert rewritten == 2 and prepared is not p
    filecheck(tmp_path, WINOGRAD_CHECKS, prepared.to_text())
    assert p.to_text() == before  # the program itself is left as it was
    assert winograd_as_linalg(p, 16)[1] == 1  # the 15x15 conv is below that minimum
    assert winograd_as_linalg(p, 0) == (p, 0)


@pytest.mark.parametrize("tile", [6, 4])
def test_winograd_is_exact_for_odd_sizes_batches_and_biases(tile, narrow_winograd, monkeypatch):
    """Every tile size on an image that is no whole number of tiles, at batch 2,
    with and without a bias, against eager (the transforms round in float32)."""
    import optc.targets.cpu as cpu
    from optc.load import Model
    from optc.lower import lower
    from optc.verify import DEFAULT_TOLERANCE

    monkeypatch.setattr(cpu, "WINOGRAD_F6_MIN_OUTPUT", 1 if tile == 6 else 10**6)
    torch.manual_seed(0)
    model = Model(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1, bias=False)).eval(),
                  (torch.randn(2, 8, 19, 23),), "odd")
    p = lower(model)
    prepared, rewritten = cpu.winograd_as_linalg(p, 1)
    assert rewritten == 2 and "linalg.conv_2d_nchw_fchw" not in prepared.to_text()
    t = CpuTarget()
    art = t.compile(p, CpuOptions(winograd=1))
    err = compare(t.open(art.vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= DEFAULT_TOLERANCE / 10, err


def test_winograd_leaves_convs_with_few_input_channels_on_im2col():
    # penni's basis conv (1 input channel), a small CNN's 16 -> 32 conv: im2col; 32 -> 64, 64 -> 64 and 64 -> 28: Winograd
    from optc.load import Model
    from optc.lower import lower
    from optc.targets.cpu import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_OUT_CHANNELS, WINOGRAD_MIN_OUTPUT, winograd_convs

    class Widths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.basis = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.small = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.up = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.wide = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.low_rank = torch.nn.Conv2d(64, 28, 3, padding=1)  # lowrank's first conv of a 64-channel layer

        def forward(self, x):
            return self.low_rank(self.wide(self.up(self.small(self.basis(x)))))

    assert (WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_OUT_CHANNELS) == (32, 16)
    p = lower(Model(Widths().eval(), (torch.randn(1, 1, 32, 32),), "widths"))
    assert [op.operands[1].type.shape for op in winograd_convs(p, WINOGRAD_MIN_OUTPUT)] == [[64, 32, 3, 3], [64, 64, 3, 3], [28, 64, 3, 3]]


def test_winograd_flags_hoist_filters_only_when_a_conv_is_rewritten():
    from optc.load import Model
    from optc.lower import lower
    from optc.targets.cpu import HOIST_WINOGRAD_FILTERS

    t = CpuTarget()
    assert HOIST_WINOGRAD_FILTERS in t.flags(CpuOptions(), winograd=True)
    assert HOIST_WINOGRAD_FILTERS not in t.flags(CpuOptions())
    assert HOIST_WINOGRAD_FILTERS not in t.flags(CpuOptions(fast=False), winograd=True)
    # what compile() passes: a 64-channel 3x3 conv at 32x32 is on Winograd unless winograd=0
    model = Model(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1)).eval(), (torch.randn(1, 64, 32, 32),), "wide")
    p = lower(model)
    assert HOIST_WINOGRAD_FILTERS in t.flags_for(p, CpuOptions())
    assert HOIST_WINOGRAD_FILTERS not in t.flags_for(p, CpuOptions(winograd=0))


@pytest.mark.parametrize("spec, winograd", [("tests.e2e.probe_models:conv_kinds", 1), ("examples.models:cnn", 28)])
def test_default_flags_with_winograd_stay_within_compile_tolerance(spec, winograd, narrow_winograd):
    """Winograd is not exact in float32: its artifact must still meet the
    tolerance `optc compile` checks (1e-4 relative), here with room to spare
    (conv_kinds: two biased convs; cnn: the default output threshold, a bias-free stem)."""
    from optc.load import load_model
    from optc.lower import lower
    from optc.targets.cpu import winograd_as_linalg
    from optc.verify import DEFAULT_TOLERANCE

    model = load_model(spec)
    p = lower(model)
    assert winograd_as_linalg(p, winograd)[1]
    t = CpuTarget()
    opts = CpuOptions(winograd=winograd)
    art = t.compile(p, opts)
    assert art.flags_used == "fast"
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


class _FilterBanks(torch.nn.Module):
    """A biased one-channel conv (stride 2) on a one-channel image, then a
    dilated conv that penni decomposes into a basis stage over its channels."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(6, 8, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.body(torch.relu(self.stem(x)))


# The stem stays NCHW, its bias the generic's initial value; penni's basis
# stage (6 channels as one-channel images, 3 filters each) is computed on the
# image: channels-last as (n, h, w, channel, basis), the layout its 1x1
# coefficient conv reads once IREE makes that conv channels-last, or, when
# the output width is a multiple of IREE's packed rows, NCHW as (n, channel,
# basis, h, w).
FILTER_BANK_CHECKS = {
    17: """
// CHECK:      linalg.generic {{.*}} outs(%{{.*}} : tensor<2x6x9x9xf32>)
// CHECK-NOT:  linalg.conv_2d_nchw_fchw {{.*}} tensor<6x1x3x3xf32>
// CHECK:      linalg.transpose ins(%{{.*}} : tensor<2x6x13x13xf32>) {{.*}} permutation = [0, 2, 3, 1]
// CHECK:      tensor.extract_slice %{{.*}}[0, 4, 4, 0] [2, 9, 9, 6] [1, 1, 1, 1]
// CHECK:      linalg.generic {{.*}} outs(%{{.*}} : tensor<2x9x9x6x3xf32>)
// CHECK:      tensor.collapse_shape {{.*}} into tensor<2x9x9x18xf32>
// CHECK:      linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<2x18x9x9xf32>, tensor<8x18x1x1xf32>)
// CHECK-NOT:  linalg.conv_2d_nchw_fchw {{.*}} tensor<3x1x3x3xf32>
""",
    31: """
// CHECK:      linalg.generic {{.*}} outs(%{{.*}} : tensor<2x6x16x16xf32>)
// CHECK:      tensor.extract_slice %{{.*}}[0, 0, 4, 4] [2, 6, 16, 16] [1, 1, 1, 1]
// CHECK:      linalg.generic {{.*}} outs(%{{.*}} : tensor<2x6x3x16x16xf32>)
// CHECK:      tensor.collapse_shape {{.*}} into tensor<2x18x16x16xf32>
// CHECK:      linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<2x18x16x16xf32>, tensor<8x18x1x1xf32>)
// CHECK-NOT:  linalg.conv_2d_nchw_fchw {{.*}} tensor<3x1x3x3xf32>
""",
}


@pytest.mark.parametrize("size", sorted(FILTER_BANK_CHECKS))
def test_one_channel_convs_and_penni_basis_stages_become_taps_and_match_eager(tmp_path, size):
    from optc.api import MethodContext
    from optc.load import Model
    from optc.lower import lower
    from optc.plugins.penni import Penni
    from optc.targets.cpu import single_channel_convs_as_taps
    from optc.testing import options_for

    torch.manual_seed(0)
    model = Model(_FilterBanks().eval(), (torch.randn(2, 1, size, size),), "filter-banks")
    p = lower(model)
    Penni().apply(p, options_for(Penni(), {"bases": 3, "layers": "body.weight"}), MethodContext())
    before = p.to_text()
    assert before.count("x1x3x3xf32>) outs") == 2  # the stem and penni's basis conv read one input channel
    prepared = single_channel_convs_as_taps(p)
    filecheck(tmp_path, FILTER_BANK_CHECKS[size], prepared.to_text())
    assert p.to_text() == before
    _, dense = _probe("conv_kinds")
    assert single_channel_convs_as_taps(dense) is dense
    t = CpuTarget()
    fast = t.compile(p, CpuOptions())
    safe = t.compile(p, CpuOptions(fast=False))
    outputs = [t.open(art.vmfb, CpuOptions())(*p.example_inputs) for art in (fast, safe)]
    err = compare(outputs[0], outputs[1])
    assert err.max_rel <= 1e-5, err
    full = lower(model)  # with every basis kept penni is exact: the fast build matches eager
    Penni().apply(full, options_for(Penni(), {"bases": 9, "force": True, "layers": "body.weight"}), MethodContext())
    err = compare(t.open(t.compile(full, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


def test_max_pools_become_taps_and_match_eager():
    from optc.load import Model
    from optc.lower import lower
    from optc.targets.cpu import max_pools_as_taps

    class Pools(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.max_pool2d(x - 1, 3, stride=2, padding=1)  # padded: -inf, not zero, at the border
            return torch.nn.functional.max_pool2d(y, (2, 3), stride=(1, 2), dilation=(2, 1))

    torch.manual_seed(0)
    model = Model(Pools().eval(), (torch.randn(2, 3, 15, 13),), "pools")
    p = lower(model)
    assert p.to_text().count("linalg.pooling_nchw_max") == 2
    text = max_pools_as_taps(p).to_text()
    assert "pooling" not in text and text.count("arith.maximumf") >= 9 + 6
    assert "[1, 2, 2, 1]" in text  # the strided pool's taps are strided slices (channels last)
    _compile_and_compare(model, p)


MATVEC_CHECKS = """
// Each weight becomes one panel constant, P[t, k, i] = W[k, t*L + i]: wide 13 -> 256 in 128-wide panels, narrow 256 -> 48 in 16-wide ones
// CHECK-DAG: dense_resource<narrow.weight.panels16> : tensor<3x256x16xf32>
// CHECK-DAG: dense_resource<wide.weight.panels128> : tensor<2x13x128xf32>
// CHECK: linalg.generic {indexing_maps = [#[[X:map[0-9]*]], #[[P:map[0-9]*]], #[[Y:map[0-9]*]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK-SAME: ins(%{{.*}}, %{{.*}} : tensor<13xf32>, tensor<2x13x128xf32>) outs(%{{.*}} : tensor<2x128xf32>)
// CHECK-SAME: compilation_info = #iree_codegen.compilation_info<lowering_config = #iree_cpu.lowering_config<distribution = [2, 0, 0], vector_common_parallel = [1, 128, 0], vector_reduction = [0, 0, 8]>
// CHECK-NEXT: ^bb0(%[[XV:.*]]: f32, %[[WV:.*]]: f32, %[[ACC:.*]]: f32):
// CHECK-NEXT: %[[M:.*]] = arith.mulf %[[XV]], %[[WV]]
// CHECK-NEXT: %[[S:.*]] = arith.addf %[[ACC]], %[[M]]
// CHECK-NEXT: linalg.yield %[[S]]
// CHECK: tensor.collapse_shape %{{.*}} {{\[\[}}0], [1, 2]] : tensor<1x2x128xf32> into tensor<1x256xf32>
// CHECK: ins(%{{.*}}, %{{.*}} : tensor<256xf32>, tensor<3x256x16xf32>) outs(%{{.*}} : tensor<3x16xf32>)
// CHECK-SAME: vector_common_parallel = [1, 16, 0]
// The 40-output layer stays IREE's matmul
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<1x48xf32>, tensor<48x40xf32>)
"""


def test_one_row_weight_matmuls_become_panel_reductions_and_match_eager(tmp_path):
    from optc.targets.cpu import matvecs_as_panels, weight_matvecs

    model, p = _probe("matvec_kinds")
    before = p.to_text()
    assert len(weight_matvecs(p)) == 5  # wide and narrow twice each, back; not the 40-output layer
    prepared = matvecs_as_panels(p)
    text = prepared.to_text()
    filecheck(tmp_path, MATVEC_CHECKS, text)
    assert text.count("linalg.matmul") == 1 and text.count("compilation_info = ") == 5
    assert sorted(n for n in prepared.params if ".panels" in n) == ["back.weight.panels16", "narrow.weight.panels16", "wide.weight.panels128"]
    assert p.to_text() == before  # the program itself is left as it was
    for options in (CpuOptions(), CpuOptions(driver="local-task")):
        _compile_and_compare(model, p, options)
    assert not weight_matvecs(_probe("conv_kinds")[1])


def test_a_weight_also_read_by_a_wider_matmul_is_not_packed():
    """A batch-4 variant beside the batch-1 one: panels for the one-row matmuls
    would store each weight twice, so both variants keep IREE's matmul."""
    from optc.load import load_model
    from optc.targets.cpu import matvecs_as_panels, weight_matvecs
    from optc.variants import lower_at_shapes, merge_variants

    model = load_model("examples.models:mlp")
    one, four = lower_at_shapes(model, [(1, 256), (4, 256)])
    assert weight_matvecs(one)  # alone, the batch-1 function's layers are packed
    merged = merge_variants([four, one])
    assert weight_matvecs(merged) == [] and matvecs_as_panels(merged) is merged


def test_an_rnn_reads_one_panel_constant_per_weight_for_all_its_steps():
    from optc.targets.cpu import matvecs_as_panels, weight_matvecs

    model, p = lowered("lstm2_h256")
    steps = weight_matvecs(p)
    recurrent = {p.trace_param(op.operands[1])[0] for op in steps}
    assert len(steps) >= 2 * 8 and len(recurrent) == 2  # every step of both layers, against two hidden-to-hidden weights
    prepared = matvecs_as_panels(p)
    assert sum(".panels" in n for n in prepared.params) == 2
    _compile_and_compare(model, p)


SOFTMAX_CHECKS = """
// CHECK: %[[MAX:.*]]:2 = linalg.generic
// CHECK: arith.maximumf
// exp(x - max) is one generic
// CHECK: linalg.generic
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.subf
// CHECK-NEXT: math.exp
// CHECK-NEXT: linalg.yield
// the all -inf check of a row compares its max
// CHECK: %[[NINF:.*]] = arith.constant 0xFF800000 : f32
// CHECK: linalg.generic {{.*}} ins(%[[MAX]]#0 : tensor<1x2x16xf32>) outs(%{{.*}} : tensor<1x2x16x1xi1>)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.cmpf oeq, %{{.*}}, %[[NINF]] : f32
// CHECK-NEXT: linalg.yield
"""


def test_softmax_computes_each_exp_once_and_its_masked_row_check_reads_the_row_max(tmp_path):
    from optc.targets.cpu import softmax_exp_once

    model, p = _probe("masked_attention")
    before = p.to_text()
    assert before.count("arith.andi") == 1 and before.count("math.exp") == 1  # torch-mlir's _safe_softmax
    text = softmax_exp_once(p).to_text()
    filecheck(tmp_path, SOFTMAX_CHECKS, text)
    assert "arith.andi" not in text and text.count("math.exp") == 1
    assert p.to_text() == before
    _compile_and_compare(model, p)  # its last query sees no key: zeros from both, not NaN


ATTENTION_CHECKS = """
// CHECK: #[[VREAD:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d3, d0, d2)>
// Q·Kᵀ
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%{{.*}}, %{{.*}} : tensor<4x16x16xf32>, tensor<4x16x16xf32>)
// CHECK-SAME: lowering_config = #iree_cpu.lowering_config<distribution = [1, 16, 16, 0], vector_common_parallel = [1, 8, 16, 0], vector_reduction = [0, 0, 0, 1]>
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.mulf
// CHECK-NEXT: arith.addf
// P·V reads V as the heads' projection lays it out, not a transposed copy
// CHECK: linalg.generic {indexing_maps = [#{{.*}}, #[[VREAD]], #{{.*}}], {{.*}} ins(%{{.*}}, %{{.*}} : tensor<4x16x16xf32>, tensor<16x4x16xf32>)
// CHECK-SAME: compilation_info
"""


def test_attention_matmuls_become_generics_with_their_own_tiles_and_match_eager(tmp_path):
    from optc.targets.cpu import attention_matmuls, configured_contractions

    model, p = lowered("transformer")
    assert attention_matmuls(p) == 2
    before = p.to_text()
    text = configured_contractions(p).to_text()
    filecheck(tmp_path, ATTENTION_CHECKS, text)
    assert "linalg.batch_matmul" not in text and text.count("compilation_info = ") == 2
    assert p.to_text() == before
    for options in (CpuOptions(), CpuOptions(driver="local-task")):
        _compile_and_compare(model, p, options)


def test_transpose_propagation_is_off_only_for_programs_with_attention():
    from optc.targets.cpu import NO_TRANSPOSE_PROPAGATION, attention_matmuls

    assert attention_matmuls(lowered("transformer")[1]) == 2  # Q·Kᵀ and P·V
    assert attention_matmuls(lowered("lstm")[1]) == 0 and attention_matmuls(lowered("cnn")[1]) == 0
    t = CpuTarget()
    assert NO_TRANSPOSE_PROPAGATION in t.flags_for(lowered("transformer")[1], CpuOptions())  # what compile() passes
    assert NO_TRANSPOSE_PROPAGATION not in t.flags_for(lowered("lstm")[1], CpuOptions())
    assert NO_TRANSPOSE_PROPAGATION in t.flags(CpuOptions(), attention=True)
    assert NO_TRANSPOSE_PROPAGATION not in t.flags(CpuOptions())
    assert NO_TRANSPOSE_PROPAGATION not in t.flags(CpuOptions(fast=False), attention=True)
    mine = "--iree-global-opt-propagate-transposes=true"  # a user's own choice wins (IREE takes a flag once)
    assert t.flags(CpuOptions(flags=(mine,)), attention=True).count(mine) == 1
    assert NO_TRANSPOSE_PROPAGATION not in t.flags(CpuOptions(flags=(mine,)), attention=True)
