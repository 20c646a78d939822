"""``--target cpu``: IREE llvm-cpu for this host, run with the ``local-task`` driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optc.api import Artifact, Session, Target, option
from optc.hookspecs import hookimpl
from optc.program import Program

from optc.targets.iree_common import IreeSession, compile_program

# Measured, not guessed (DESIGN.md): im2col + data tiling + O3 took ResNet-18 from
# ~0.1x to ~0.86x of eager speed and MobileNetV2 to ~1.1x.
FAST_FLAGS = (
    "--iree-global-opt-use-im2col-for-convs",
    "--iree-opt-data-tiling",
    "--iree-opt-level=O3",
)


@dataclass
class CpuOptions:
    cpu: str = option("host", "LLVM CPU name to generate code for (host = this machine)")
    fast: bool = option(True, "use the measured fast flag set (im2col for convs, data tiling, O3)")
    flags: tuple[str, ...] = option((), "extra IREE compiler flags, comma-separated (for experiments; see benchmarks/cpu_flags.py)")


class CpuTarget(Target):
    name = "cpu"
    summary = "IREE llvm-cpu for the host CPU, runtime driver local-task"
    Options = CpuOptions

    def flags(self, options: CpuOptions) -> list[str]:
        flags = [f"--iree-llvmcpu-target-cpu={options.cpu}"]
        if options.fast:
            flags += FAST_FLAGS
        return flags + list(options.flags)

    def compile(self, program: Program, options: Any) -> Artifact:
        return compile_program(program, self.name, "llvm-cpu", self.flags(options), options)

    def open(self, artifact_vmfb: bytes, options: Any, threads: int | None = None) -> Session:
        return IreeSession(artifact_vmfb, "local-task")


@hookimpl
def optc_register_targets(register):
    register(CpuTarget())
