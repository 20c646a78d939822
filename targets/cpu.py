"""``--target cpu``: IREE llvm-cpu for this host, run with the ``local-task`` driver."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from optc.api import Artifact, Session, Target, option
from optc.errors import CompileError
from optc.hookspecs import hookimpl
from optc.program import Program

from optc.targets.iree_common import IreeSession, compile_program

# Measured, not guessed: eager ÷ IREE latency at batch 1, 2 threads, one process,
# interleaved with rotation and passive OpenMP (benchmarks/cpu_flags.py,
# 2026-11-23, this 2-core machine):
#                                  resnet18  mobilenetv2  lstm  bert
#   im2col + data tiling + O3        1.02       1.08      1.05  1.15
#   + aggressive fusion              1.04       1.06      1.11  1.17
#   + ukernels + aggressive fusion   0.95       1.13      1.13  1.12
#   + channels-last (all: default)   0.96       1.09      0.98  1.11
# The rows differ by less than the run-to-run noise (about ±0.1). Without
# im2col ResNet-18 ran ~10x slower than eager (DESIGN.md). An earlier sweep that
# timed in a fixed order (eager first) made the row after eager look 20-40%
# slower: that was PyTorch's spinning OpenMP workers, not the flags.
# Aggressive fusion (on at O2/O3 unless turned off) makes valid modules fail in
# IREE 3.13: a tensor returned beside its softmax ("'vector.store' op write
# affecting operations on global resources ...") and a rank-1 low-rank MLP
# ("exceeded stack allocation limit"); its gain above was within the noise, so
# the fast set turns it off explicitly. Should the fast set still fail on some
# module, compile() retries with the safe set and the report says so.
_CHANNELS_LAST = "builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))"
FAST_FLAGS = (
    "--iree-global-opt-use-im2col-for-convs",
    "--iree-opt-data-tiling",
    "--iree-opt-level=O3",
    "--iree-llvmcpu-enable-ukernels=all",
    "--iree-dispatch-creation-enable-aggressive-fusion=false",
    f"--iree-preprocessing-pass-pipeline={_CHANNELS_LAST}",
)

_CPU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class CpuOptions:
    cpu: str = option("host", "LLVM CPU name to generate code for (host = this machine)")
    fast: bool = option(True, "use the measured fast flag set (im2col, data tiling, O3, ukernels, channels-last convs); falls back to the safe set if it fails")
    flags: tuple[str, ...] = option((), "extra IREE compiler flags, comma-separated (for experiments; see benchmarks/cpu_flags.py)")

    def validate(self) -> None:
        if not _CPU_NAME.match(self.cpu):
            raise ValueError(f"cpu={self.cpu!r}: expected an LLVM CPU name such as host, x86-64-v3 or skylake")
        bad = [f for f in self.flags if not f.startswith("--")]
        if bad:
            raise ValueError(f"flags: {bad[0]!r} is not a compiler flag (flags start with --)")


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
        try:
            artifact = compile_program(program, self.name, "llvm-cpu", self.flags(options), options)
        except CompileError as fast_error:
            if not options.fast:
                raise
            artifact = compile_program(program, self.name, "llvm-cpu", self.flags(replace(options, fast=False)), options)
            artifact.flags_used = f"safe (fast set failed: {str(fast_error).removeprefix('IREE llvm-cpu compile failed: ')})"
            return artifact
        artifact.flags_used = "fast" if options.fast else "safe"
        return artifact

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        return IreeSession(artifact_vmfb, "local-task")


@hookimpl
def optc_register_targets(register):
    register(CpuTarget())
