"""What the IREE-based targets share: compiling bytecode with flags, and a
runtime session that calls the module's entry function."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from optc.api import Artifact, Session
from optc.errors import CompileError, InputError, first_line
from optc.program import Program


def compile_program(
    program: Program, target: str, backend: str, flags: Sequence[str], options: Any
) -> Artifact:
    import iree.compiler as ic

    if program.has_narrow_weights():
        # Compile-time constant evaluation would fold each dequantize into an f32
        # copy of the weight inside the artifact; evaluated at load time instead,
        # the artifact keeps the narrow bytes and inference still reads f32.
        flags = [*flags, "--iree-opt-const-eval=false"]
    start = time.perf_counter()
    try:
        vmfb = ic.compile_str(program.to_bytecode(), target_backends=[backend], extra_args=list(flags))
    except ic.CompilerToolError as e:
        lines = [ln for ln in str(e).splitlines() if "error:" in ln]
        detail = lines[0].strip() if lines else first_line(e)
        raise CompileError(f"IREE {backend} compile failed: {detail}") from None
    return Artifact(target=target, vmfb=vmfb, options=options, compile_seconds=time.perf_counter() - start)


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

    def invoke(self, *inputs: np.ndarray) -> Any:
        """Run without copying results back (for timing)."""
        return self._fn(*[np.ascontiguousarray(x) for x in inputs])

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
