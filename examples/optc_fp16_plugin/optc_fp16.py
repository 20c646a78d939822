"""An example third-party optc method, ``--plugins fp16``.

Every weight that feeds a matmul or convolution is stored as float16 (half the
bytes in the artifact) and widened back to float32 by an ``arith.extf`` right
where it is used. It registers exactly the way optc's built-in methods do, and
is built on the same per-layer driver (``optc.api.LayerMethod``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter
from optc.storage import IDENTITY


@dataclass
class Fp16Options(SelectionOptions):
    min_size: int = option(1024, "only weights with at least this many elements (small ones are not worth it)")

    def validate(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"min_size={self.min_size}: must be >= 0")
        super().validate()


class Fp16(LayerMethod):
    name = "fp16"
    summary = "store matmul/conv weights as float16, widened to float32 where they are used"
    Options = Fp16Options
    needs_matrix = False  # any weight, in its own layout

    def plan(self, layer: Layer, options: Fp16Options, ctx: MethodContext) -> Plan | Skip:
        weight = layer.weight
        if weight.dtype != np.float32 or weight.size < options.min_size:
            return Skip(SkipReason.NOT_PROFITABLE, f"{weight.dtype}, {weight.size} elements")
        return Plan("stored as float16", {"bytes_saved": weight.nbytes // 2})

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        narrow = layer.weight.astype(np.float16)
        rw.store(narrow, suffix="fp16", layout=IDENTITY, dtype=np.float16)  # the parameter as it is
        return narrow.astype(np.float32)


@hookimpl
def optc_register_methods(register):
    register(Fp16())
