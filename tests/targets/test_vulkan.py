"""vulkan target on whatever Vulkan device is here (Mesa lavapipe in CI)."""

import pytest

from optc.api import MethodContext
from optc.plugins.lowrank import LowRank, LowRankOptions
from optc.targets.vulkan import VulkanOptions, VulkanTarget, rewrite_depthwise_nchw_to_nhwc
from optc.verify import compare, eager_outputs, verify
from tests.conftest import lowered, vulkan_or_skip


@pytest.fixture(autouse=True)
def _need_vulkan():
    vulkan_or_skip()


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_lowrank_artifact_matches_the_compressed_reference(name):
    model, p = lowered(name)
    result = LowRank().apply(p, LowRankOptions(energy=0.8), MethodContext())
    t = VulkanTarget()
    outs = t.open(t.compile(p, VulkanOptions()).vmfb, VulkanOptions())(*p.example_inputs)
    check = verify(model.module, result.reference_weights, outs, p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check.as_dict()


def test_depthwise_nchw_is_rewritten_to_nhwc_and_stays_exact():
    model, p = lowered("cnn")
    assert rewrite_depthwise_nchw_to_nhwc(p) == 1
    names = [op.name for op in p.ops()]
    assert "linalg.depthwise_conv_2d_nchw_chw" not in names
    assert "linalg.depthwise_conv_2d_nhwc_hwc" in names
    p.verify()
    # run the rewritten program on the cpu target: the rewrite itself is exact
    from optc.targets.cpu import CpuOptions, CpuTarget

    out = CpuTarget().open(CpuTarget().compile(p, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs)
    assert compare(out, eager_outputs(model.module, p.example_inputs)).max_rel <= 1e-5


def test_mobile_profiles_compile_but_are_verified_through_a_portable_build():
    _, p = lowered("mlp")
    t = VulkanTarget()
    for profile in ("valhall4", "adreno"):
        opts = VulkanOptions(profile=profile)
        assert f"--iree-vulkan-target={profile}" in t.flags(opts)
        assert len(t.compile(p, opts).vmfb) > 1000
        ok, why = t.runs_here(opts)
        assert not ok and profile in why
        assert t.portable_options(opts).profile == "default"
    assert t.runs_here(VulkanOptions()) == (True, "")


def test_float16_weights_are_refused_up_front_naming_the_missing_capability():
    import sys

    from optc.driver import Selection, compile_model
    from optc.errors import CompileError
    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "examples" / "optc_fp16_plugin"))
    from optc_fp16 import Fp16

    for profile in ("default", "valhall4"):  # a mobile build is verified through a default one here
        sel = Selection([(Fp16(), Fp16.Options())], VulkanTarget(), VulkanOptions(profile=profile))
        with pytest.raises(CompileError) as e:
            compile_model("examples.models:mlp", sel)
        assert "float16 weights need 16-bit storage buffers" in str(e.value)
        assert "which the default profile's SPIR-V target lacks" in str(e.value)
    _, p = lowered("mlp")
    assert VulkanTarget().supports(p, VulkanOptions()) == (True, "")  # float32 weights compile


def test_int8_weights_are_refused_on_the_default_profile():
    from optc.storage import quantize, store

    _, p = lowered("mlp")
    layer = p.layers()[0]
    store(p, layer.param, quantize(layer.matrix(), 8), name="q", origin=layer.name, layout=layer.layout())
    ok, why = VulkanTarget().supports(p, VulkanOptions())
    assert not ok and "int8 weights need 8-bit storage buffers" in why
    assert VulkanTarget().supports(p, VulkanOptions(profile="valhall4")) == (True, "")
