"""An example third-party optc method, ``--plugins fp16``.

Every weight that feeds a matmul or convolution is stored as float16 (half the
bytes in the artifact) and widened back to float32 by an ``arith.extf`` right
where it is used. It registers exactly the way optc's built-in methods do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optc.api import LayerChange, Method, MethodContext, MethodResult, option
from optc.hookspecs import hookimpl
from optc.program import Program


@dataclass
class Fp16Options:
    min_size: int = option(1024, "only weights with at least this many elements (small ones are not worth it)")

    def validate(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"min_size={self.min_size}: must be >= 0")


class Fp16(Method):
    name = "fp16"
    summary = "store matmul/conv weights as float16, widened to float32 where they are used"
    Options = Fp16Options

    def apply(self, program: Program, options: Fp16Options, ctx: MethodContext) -> MethodResult:
        from torch_mlir.dialects import arith

        result = MethodResult(self.name)
        params = {w.param: w.layer for w in program.weighted_ops()}
        for param, layer in params.items():
            weight = program.params[param]
            if program.rewritten(param):
                # Its layer's effective weight is a product of several arrays
                # that this method does not know how to combine.
                result.changes.append(LayerChange(layer, "skipped: already rewritten by an earlier method"))
                continue
            if weight.dtype != np.float32 or weight.size < options.min_size:
                result.changes.append(LayerChange(layer, f"skipped: {weight.dtype}, {weight.size} elements"))
                continue
            narrow = weight.astype(np.float16)
            old = program.constant_op(param)
            stored = program.constant(f"{param}.fp16", narrow, origin=layer)
            with program.at(old):
                wide = arith.ExtFOp(old.results[0].type, stored).result
            program.replace(old, wide)
            result.reference_weights[param] = narrow.astype(np.float32)
            result.changes.append(LayerChange(layer, "stored as float16", {"bytes_saved": weight.nbytes - narrow.nbytes}))
        return result


@hookimpl
def optc_register_methods(register):
    register(Fp16())
