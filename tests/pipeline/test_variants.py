"""One model lowered at several input shapes, merged into one module that stores each weight once."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import InputError
from optc.load import load_model
from optc.program import resource_name
from optc.targets.cpu import CpuOptions, CpuTarget
from optc.targets.iree_common import IreeSession
from optc.variants import lower_at_shapes, merge_variants, variant_name
from optc.verify import compare, eager_outputs


def blob_names(program):
    return [
        resource_name(op.attributes["value"])
        for func in program.module.body.operations
        for op in func.regions[0].blocks[0].operations
        if op.name == "arith.constant" and resource_name(op.attributes["value"])
    ]


@pytest.mark.parametrize("name, shapes", [("mlp", [(4, 256), (1, 256)]), ("cnn", [(1, 3, 32, 32), (1, 3, 16, 16)])])
def test_merged_variants_compile_once_and_each_equals_eager(name, shapes):
    model = load_model(f"examples.models:{name}")
    programs = lower_at_shapes(model, shapes)
    assert [p.example_inputs[0].shape for p in programs] == shapes
    first = programs[0]
    for p in programs[1:]:  # same names, identical arrays
        assert p.params.keys() == first.params.keys()
        assert all(np.array_equal(p.params[k], first.params[k]) for k in first.params)

    merged = merge_variants(programs)
    merged.verify()
    names = [variant_name(p) for p in programs]
    assert names[0] == "main_" + "x".join(map(str, shapes[0]))
    # each function's constants name the one blob of each parameter
    assert sorted(set(blob_names(merged))) == sorted(first.params)
    assert len(blob_names(merged)) == len(programs) * len(blob_names(first))

    target, options = CpuTarget(), CpuOptions()
    vmfb = target.compile(merged, options).vmfb
    for p, fn in zip(programs, names):
        out = IreeSession(vmfb, "local-task", func=fn)(*p.example_inputs)
        assert compare(out, eager_outputs(model.module, p.example_inputs)).max_rel < 1e-5
    if name == "mlp":  # weights (1.6 MB) dominate: the second variant adds code, not weights
        single = target.compile(first, options).vmfb
        assert len(vmfb) < 1.1 * len(single)
        assert len(merged.to_bytecode()) < 1.01 * len(first.to_bytecode())


def test_shapes_must_fit_the_inputs():
    model = load_model("examples.models:mlp")
    with pytest.raises(InputError, match="takes 1"):
        lower_at_shapes(model, [[(1, 256), (1, 256)]])
    with pytest.raises(InputError, match="positive"):
        lower_at_shapes(model, [(0, 256)])
    with pytest.raises(ValueError, match="distinct"):
        merge_variants(lower_at_shapes(model, [(2, 256)]) * 2)
