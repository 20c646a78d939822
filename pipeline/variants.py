"""One model at several input shapes, one set of weights.

``lower_at_shapes`` lowers the same ``Model`` once per input shape (torch.export
specializes shapes), checking that every variant names the same parameters with
identical arrays. ``merge_variants`` puts the variants' functions into one
module in which each parameter is one ``dense_resource`` blob that every
function's constant refers to, so the weights are stored once however many
variants there are (dynamic resolution builds on this).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith

from optc.errors import InputError, LowerError
from optc.load import Model
from optc.lower import lower
from optc.program import Program, resource_name

Shape = tuple[int, ...]


def lower_at_shapes(model: Model, shapes: Sequence[Shape | Sequence[Shape]], seed: int = 0) -> list[Program]:
    """``model`` lowered once per entry of ``shapes``: a shape (a model with one
    input) or one shape per input. Inputs keep the dtypes of the model's example
    inputs; their values are seeded random numbers."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    programs = []
    for entry in shapes:
        per_input = [tuple(entry)] if entry and isinstance(entry[0], int) else [tuple(s) for s in entry]  # type: ignore[arg-type]
        if len(per_input) != len(model.example_inputs):
            raise InputError(f"shape {entry} gives {len(per_input)} inputs; {model.source} takes {len(model.example_inputs)}")
        inputs = []
        for shape, like in zip(per_input, model.example_inputs):
            if any(d <= 0 for d in shape):
                raise InputError(f"shape {shape}: every dimension must be a positive integer")
            if like.dtype.is_floating_point:
                inputs.append(torch.randn(shape, generator=gen).to(like.dtype))
            else:
                inputs.append(torch.randint(0, 8, shape, generator=gen).to(like.dtype))
        programs.append(lower(dataclasses.replace(model, example_inputs=tuple(inputs), exported=None)))
    first = programs[0]
    for entry, p in zip(shapes[1:], programs[1:]):
        if set(p.params) != set(first.params):
            raise LowerError(f"{model.source} at {entry} has parameters {sorted(set(p.params) ^ set(first.params))} that the first shape has not (or the reverse)")
        for name, array in p.params.items():
            if not np.array_equal(array, first.params[name]):
                raise LowerError(f"{model.source} at {entry}: parameter {name} differs from the first shape's")
    return programs


def variant_name(program: Program) -> str:
    """``main_1x3x32x32`` (inputs joined by ``_``): the function name of a variant."""
    return "main_" + "_".join("x".join(map(str, x.shape)) for x in program.example_inputs)


def merge_variants(programs: Sequence[Program], names: Sequence[str] | None = None) -> Program:
    """One module holding each program's function (renamed ``names``, by default
    :func:`variant_name`), every parameter stored once and shared by all of them.

    The result is a ``Program`` viewing the first function; view another with
    ``dataclasses.replace(merged, func_name=name, example_inputs=...)``. Its
    ``ops()``/``erase_dead()`` see one function at a time, so rewrite the variants
    before merging them, not after."""
    if not programs:
        raise ValueError("no programs to merge")
    names = list(names) if names is not None else [variant_name(p) for p in programs]
    if len(set(names)) != len(names) or len(names) != len(programs):
        raise ValueError(f"need one distinct function name per program, got {names}")
    base = programs[0].clone()
    _rename(base.func, names[0])
    base.func_name = names[0]
    params = dict(base.params)
    shared: dict[str, ir.Attribute] = {}  # param -> the base module's attribute (its one blob)
    for op in base.ops():
        if op.name == "arith.constant" and (name := resource_name(op.attributes["value"])) in params:
            shared[name] = op.attributes["value"]
    for program, name in zip(programs[1:], names[1:]):
        theirs = [resource_name(op.attributes["value"]) for op in program.ops() if op.name == "arith.constant"]
        # parsed into the base context, clashing blob names get renamed copies; their
        # constants (in the same order) are pointed back at the base's blobs below
        parsed = ir.Module.parse(program.to_bytecode(), context=base.context)
        func = next(op.operation for op in parsed.body.operations if op.operation.name == "func.func"
                    and ir.StringAttr(op.attributes["sym_name"]).value == program.func_name)
        base.module.body.append(func)  # moves it out of the parsed module
        _rename(func, name)
        constants = [op.operation for op in func.regions[0].blocks[0].operations if op.operation.name == "arith.constant"]
        for op, param in zip(constants, theirs):
            if param is None or param not in program.params:
                continue
            if param in shared and np.array_equal(program.params[param], params[param]):
                with base.context, ir.Location.unknown(), ir.InsertionPoint(op):
                    value = arith.ConstantOp(op.results[0].type, shared[param]).result
                op.results[0].replace_all_uses_with(value)
                op.erase()
            else:  # a parameter only this variant has (or with other values): keep its own blob
                own = resource_name(op.attributes["value"])
                params[own] = program.params[param]
                base.origin[own] = program.layer_of(param)
                shared.setdefault(own, op.attributes["value"])
    base.params = params
    return base


def _rename(func: ir.Operation, name: str) -> None:
    with func.context:
        func.attributes["sym_name"] = ir.StringAttr.get(name)
