"""``--target vulkan``: IREE vulkan-spirv for desktop and mobile GPUs, run with
the ``vulkan`` driver on any Vulkan device (Mesa's lavapipe in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from optc.api import Artifact, Session, Target, option
from optc.errors import first_line
from optc.hookspecs import hookimpl
from optc.program import Program, as_value, shape_of
from optc.targets.iree_common import IreeSession, compile_program

# IREE's --iree-vulkan-target names (each checked to compile here). "default" lets
# IREE pick its generic SPIR-V target, which runs on any Vulkan 1.1+ device.
PROFILES = ("default", "valhall4", "adreno", "rdna3", "ampere")

# Narrow weight storage (optc.storage) each profile compiles. IREE's default SPIR-V
# target declares no Int8/Float16 nor 8-/16-bit storage buffers. Measured with IREE
# 3.13 on this machine: float16 weights fail to legalize there (`vector.bitcast
# vector<2xf32> -> vector<4xf16>`; on the digits CNN they were reported to compile to
# an artifact with relative error 1.0), and an int8-dequantized 3-layer MLP did not finish compiling in 15 minutes
# (the CPU target takes seconds); valhall4 and adreno compile the float16 MLP. The
# mobile profiles declare both capabilities; their artifacts cannot be run here.
NARROW_STORAGE = {"default": set(), "valhall4": {"f16", "i8"}, "adreno": {"f16", "i8"}, "rdna3": {"f16", "i8"}, "ampere": {"f16", "i8"}}
CAPABILITY = {
    "f16": "float16 weights need 16-bit storage buffers (SPIR-V StorageBuffer16BitAccess, Float16)",
    "i8": "int8 weights need 8-bit storage buffers (SPIR-V StorageBuffer8BitAccess, Int8)",
}


@dataclass
class VulkanOptions:
    profile: Literal["default", "valhall4", "adreno", "rdna3", "ampere"] = option(
        "default", "GPU to generate SPIR-V for: default, valhall4 (Arm Mali Valhall), adreno (Qualcomm), rdna3, ampere"
    )


def rewrite_depthwise_nchw_to_nhwc(program: Program) -> int:
    """IREE 3.13's vulkan-spirv path miscompiles ``linalg.depthwise_conv_2d_nchw_chw``
    (wrong results on lavapipe, all profiles); the NHWC form is correct. Rewrite each
    one to transpose -> depthwise_conv_2d_nhwc_hwc -> transpose. Returns the count."""
    from torch_mlir.dialects import linalg

    ops = [op for op in program.ops() if op.name == "linalg.depthwise_conv_2d_nchw_chw"]
    for op in ops:
        x, w = op.operands[0], op.operands[1]
        init = op.operands[2]
        strides = list(np.array(op.attributes["strides"]).tolist()) if "strides" in op.attributes else [1, 1]
        dilations = list(np.array(op.attributes["dilations"]).tolist()) if "dilations" in op.attributes else [1, 1]
        with program.at(op) as b:
            xt = b.transpose(x, [0, 2, 3, 1])
            wt = b.transpose(w, [1, 2, 0])
            it = b.transpose(init, [0, 2, 3, 1])
            y = as_value(linalg.depthwise_conv_2d_nhwc_hwc(xt, wt, outs=[it], strides=strides, dilations=dilations))
            out = b.transpose(y, [0, 3, 1, 2])
        assert shape_of(out) == shape_of(op.results[0])
        program.replace(op, out)
    return len(ops)


def _fetch_via_staging(device: Any, array: Any) -> np.ndarray:
    """``to_host()`` fails on lavapipe (it imports the host pointer, which must be
    4096-aligned); copy into a mapped host-local staging buffer instead."""
    import iree.runtime as rt

    view = array._buffer_view
    src = view.get_buffer()
    staging = device.allocator.allocate_buffer(
        memory_type=int(rt.MemoryType.HOST_LOCAL) | int(rt.MemoryType.DEVICE_VISIBLE),
        allowed_usage=int(rt.BufferUsage.TRANSFER) | int(rt.BufferUsage.MAPPING_SCOPED),
        allocation_size=src.byte_length(),
    )
    sem = device.create_semaphore(0)
    device.queue_copy(src, staging, [(sem, 0)], [(sem, 1)])
    sem.wait(1)
    mapped = staging.map()
    return np.array(mapped.asarray(list(view.shape), np.dtype(array.dtype)))


@lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    try:
        import iree.runtime as rt

        driver = rt.get_driver("vulkan")
        devices = driver.query_available_devices()
    except Exception as e:  # the driver raises RuntimeError/ValueError variants
        return False, f"no Vulkan driver ({first_line(e)}); install mesa-vulkan-drivers and libvulkan1"
    if not devices:
        return False, "no Vulkan device found; install mesa-vulkan-drivers (lavapipe) or a GPU driver"
    return True, ""


class VulkanTarget(Target):
    name = "vulkan"
    summary = "IREE vulkan-spirv (desktop default or mobile profiles), runtime driver vulkan"
    Options = VulkanOptions

    def available(self) -> tuple[bool, str]:
        return _probe()

    def runs_here(self, options: VulkanOptions) -> tuple[bool, str]:
        # A profile bakes in its GPU's subgroup size and limits; measured here, valhall4,
        # adreno, rdna3 and ampere artifacts all give wrong numbers on lavapipe (subgroup 8).
        if options.profile == "default":
            return True, ""
        return False, f"a {options.profile} artifact runs only on that GPU family, not on this machine's Vulkan device"

    def supports(self, program: Program, options: VulkanOptions) -> tuple[bool, str]:
        from optc.storage import narrow_kinds

        missing = sorted(narrow_kinds(program) - NARROW_STORAGE[options.profile])
        if missing:
            able = [p for p in PROFILES if set(missing) <= NARROW_STORAGE[p]]
            return False, (f"its {' and '.join(CAPABILITY[m] for m in missing)}, which the {options.profile} profile's SPIR-V target lacks; "
                           f"store them in float32 (drop the method that narrows them) or use --target cpu"
                           + (f" (profiles {', '.join(able)} have it, but their artifacts cannot be verified here)" if able else ""))
        return True, ""

    def portable_options(self, options: VulkanOptions) -> VulkanOptions:
        return VulkanOptions(profile="default")

    def flags(self, options: VulkanOptions) -> list[str]:
        return [] if options.profile == "default" else [f"--iree-vulkan-target={options.profile}"]

    def compile(self, program: Program, options: Any) -> Artifact:
        program = program.clone()
        rewrite_depthwise_nchw_to_nhwc(program)
        return compile_program(program, self.name, "vulkan-spirv", self.flags(options), options)

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        return IreeSession(artifact_vmfb, "vulkan", fetch=_fetch_via_staging)


@hookimpl
def optc_register_targets(register):
    register(VulkanTarget())
