"""What the IREE-based targets share: compiling bytecode with flags, and a
runtime session that calls the module's entry function."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from optc.api import Artifact, Session
from optc.errors import CompileError, InputError, first_line
from optc.program import Program


def compile_program(
    program: Program, target: str, backend: str, flags: Sequence[str], options: Any
) -> Artifact:
    if program.has_narrow_weights():
        # Compile-time constant evaluation would fold each dequantize into an f32
        # copy of the weight inside the artifact; evaluated at load time instead,
        # the artifact keeps the narrow bytes and inference still reads f32.
        flags = [*flags, "--iree-opt-const-eval=false"]
    start = time.perf_counter()
    vmfb = run_iree_compile(program.to_bytecode(), backend, flags)
    return Artifact(target=target, vmfb=vmfb, options=options, compile_seconds=time.perf_counter() - start)


def run_iree_compile(module_bytecode: bytes, backend: str, flags: Sequence[str]) -> bytes:
    """``iree-compile`` as a child that dies with optc (SIGKILL on parent death;
    killed on any exception, SIGTERM and Ctrl-C included). A rejection is a
    CompileError carrying IREE's own first error line."""
    from iree.compiler.tools import core

    with core.TempFileSaver.implicit() as tfs:
        cmd = core.build_compile_command_line("-", tfs, core.CompilerOptions(target_backends=[backend], extra_args=list(flags)))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        out, err = proc.communicate(module_bytecode)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise CompileError(f"IREE {backend} compile failed: {tool_error_line(err.decode(errors='replace'))}")
    return out


def tool_error_line(stderr: str) -> str:
    """The line of a tool's stderr that says what went wrong: the first
    ``error:`` line, else the first non-empty one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    line = (errors or lines or ["(no message)"])[0]
    return line[:300] + (" …" if len(line) > 300 else "")


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when optc dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class IreeSession(Session):
    """One loaded .vmfb on one IREE driver."""

    def __init__(
        self,
        vmfb: bytes,
        driver: str,
        fetch: Callable[[Any, Any], np.ndarray] | None = None,
        func: str = "main",
    ):
        import iree.runtime as rt

        self._rt = rt
        self.driver = driver
        self.config = rt.Config(driver)
        self.context = rt.SystemContext(config=self.config)
        try:
            module = rt.VmModule.copy_buffer(self.context.instance, vmfb)
        except ValueError as e:
            raise InputError(f"not an IREE module (.vmfb): {first_line(e)[:200]}") from None
        self.context.add_vm_module(module)
        module = self.context.modules.module
        try:
            self._fn = module[func]
        except (KeyError, AttributeError):
            raise InputError(f"the artifact has no function {func!r}") from None
        self._fetch = fetch or (lambda device, arr: np.asarray(arr.to_host()))

    @property
    def device(self) -> Any:
        return self.config.device

    def invoke(self, *inputs: Any) -> Any:
        """Run without copying results back (for timing)."""
        return self._fn(*self._arguments(inputs))

    def entry(self, name: str) -> Callable[..., list[np.ndarray]]:
        fn = self.context.modules.module[name]
        return lambda *inputs: self.fetch(fn(*self._arguments(inputs)))

    def _arguments(self, inputs: Sequence[Any]) -> list[Any]:
        return [x if isinstance(x, self._rt.DeviceArray) else np.ascontiguousarray(x) for x in inputs]

    def resident(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        return [self._rt.asdevicearray(self.device, np.ascontiguousarray(a)) for a in arrays]

    def fetch(self, raw: Any) -> list[np.ndarray]:
        results = raw if isinstance(raw, (tuple, list)) else [raw]
        return [np.array(self._fetch(self.device, r)) for r in results]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        try:
            raw = self.invoke(*inputs)
        except ValueError as e:
            detail = first_line(e).split("; while ")[0]
            raise InputError(f"inputs do not fit the compiled module: {detail}") from None
        return self.fetch(raw)
