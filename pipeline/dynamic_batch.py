"""``--dynamic-batch``: one artifact whose ``main`` takes any batch size.

A batch dimension left dynamic in the IR (torch.export ``Dim``) compiles, but
IREE then tiles and vectorizes for an unknown size: 2.0× slower at batch 1,
1.17× at 8, 1.09× at 32 than fixed-batch artifacts of the digits CNN. So the
model is lowered at the fixed batch sizes ``BATCH_SIZES`` instead, with one
shared copy of the weights (:mod:`optc.variants`), and a public ``main`` with
a dynamic batch dimension calls the variant of the batch's size on the inputs
as they are, or runs any other batch in chunks: as many chunks of 32 as fit,
then at most one each of 16, 8, 4, 2 and 1, each sliced out of the inputs and
inserted into the outputs. Every batch size runs exactly (no padding); a batch
of 1, 2, 4, 8, 16 or 32 is one call of the variant compiled
for it. Methods see the variants like drnet's (``Program.variants``): each
layer is planned once and every variant's copy rewritten the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from torch_mlir import ir

from optc.builder import tensor_type_text
from optc.errors import InputError, LoadError, LowerError
from optc.load import Model
from optc.program import Program

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MARK = "optc.batch_dispatch"  # on the dispatching function: its callees differ only in batch size


def lower_dynamic_batch(model: Model, program: Program, sizes: Sequence[int] = BATCH_SIZES) -> Program:
    """``program`` (``model`` lowered at its example inputs) as a module whose
    public function takes any batch: the model lowered at each of ``sizes`` and at
    the example batch (which verification and the report's totals use), the
    variants private, and a dispatcher of ``program``'s name calling them."""
    from optc.variants import lower_at_shapes, merge_variants, variant_name

    if any(x.ndim == 0 for x in model.example_inputs):
        raise InputError("--dynamic-batch: the model has a scalar input; every input needs the batch as its first dimension")
    sizes = variant_sizes(program, sizes)
    shapes = [[(b,) + tuple(x.shape[1:]) for x in model.example_inputs] for b in sizes]
    try:
        variants = lower_at_shapes(dataclasses.replace(model, exported=None), shapes)
    except (LoadError, LowerError) as e:
        raise InputError(f"--dynamic-batch: the model does not export at other batch sizes ({e}); does it fix its batch size?") from None
    for b, v in zip(sizes, variants):
        _, outs = _types(v)
        for i, t in enumerate(outs):
            if t.rank == 0 or t.shape[0] != b:
                raise InputError(f"--dynamic-batch: at batch {b} output {i} is {t}; every output needs the batch as its first dimension")
    names = [variant_name(v) for v in variants]
    merged = merge_variants(variants, names)
    with merged.context:
        for op in merged.module.body.operations:
            if op.operation.name == "func.func":
                op.attributes["sym_visibility"] = ir.StringAttr.get("private")
    text = dispatcher(program.func_name, list(zip(sizes, names)), *_types(variants[0]))
    parsed = ir.Module.parse(text, context=merged.context)
    func = next(op.operation for op in parsed.body.operations if ir.StringAttr(op.attributes["sym_name"]).value == program.func_name)
    merged.module.body.append(func)
    return dataclasses.replace(merged, func_name=program.func_name, example_inputs=program.example_inputs)


def variant_sizes(program: Program, sizes: Sequence[int] = BATCH_SIZES) -> list[int]:
    """The batch sizes :func:`lower_dynamic_batch` builds a variant for: ``sizes`` and
    the example batch of ``program``, ascending."""
    return sorted(set(sizes) | {int(program.example_inputs[0].shape[0])})


def check_chunks(run: Callable[..., list[np.ndarray]], inputs: Sequence[np.ndarray]) -> float:
    """Max relative difference between the chunk path and the exact-size path of a
    dispatcher: ``inputs`` (batch B) three times over, float copies scaled by 1, −0.5
    and 2 so a misplaced chunk shows, run as one batch of 3·B (never a variant's
    size: it runs in chunks) against each copy run alone."""
    from optc.verify import compare

    copies = [[x * np.asarray(k, x.dtype) if np.issubdtype(x.dtype, np.floating) else x for x in inputs] for k in (1.0, -0.5, 2.0)]
    together = run(*[np.concatenate(xs) for xs in zip(*copies)])
    alone = [run(*c) for c in copies]
    return compare(together, [np.concatenate(parts) for parts in zip(*alone)]).max_rel


def is_batch_dispatch(program: Program) -> bool:
    """Whether ``program``'s function is ``--dynamic-batch``'s dispatcher."""
    return MARK in program.func.attributes


def example_variant(program: Program) -> Program:
    """The function that computes ``program``'s example inputs: for a batch dispatcher,
    its variant at their batch (what totals, per-layer rows and the simulator
    describe); else ``program`` itself."""
    if is_batch_dispatch(program):
        return variant_at(program, [x.shape for x in program.example_inputs]) or program
    return program


def batch_sizes(program: Program) -> list[int]:
    """The batch sizes a dispatcher has a variant for, ascending."""
    return sorted(_types(program.function(name))[0][0].shape[0] for name in program.callees())


def variant_at(program: Program, shapes: Sequence[tuple[int, ...]]) -> Program | None:
    """The callee of a batch dispatcher compiled for inputs of ``shapes``."""
    for name in program.callees():
        view = program.function(name)
        ins, _ = _types(view)
        if [tuple(t.shape) for t in ins] == [tuple(s) for s in shapes]:
            return view
    return None


def _types(program: Program) -> tuple[list[ir.RankedTensorType], list[ir.RankedTensorType]]:
    ftype = program.function_type
    return [ir.RankedTensorType(t) for t in ftype.inputs], [ir.RankedTensorType(t) for t in ftype.results]


def dispatcher(name: str, variants: list[tuple[int, str]], inputs: list[ir.RankedTensorType], outputs: list[ir.RankedTensorType]) -> str:
    """MLIR text of ``name``: batch-dynamic inputs run through ``variants``
    ((batch size, function), any order) whose inputs/outputs are ``inputs``/
    ``outputs`` but for the batch (first) dimension. A ``cf.switch`` on the batch
    size jumps to a block that calls that size's variant and returns; other sizes
    run in chunks, largest first, each sliced out of the inputs and its outputs
    inserted (IREE copies the loop-carried outputs per chunk: 1.21–1.54× a
    fixed-batch artifact at batch 1 without the switch; nested ``scf.if``s
    instead of the switch measured 1.63×)."""
    ins = [(list(t.shape[1:]), str(t.element_type)) for t in inputs]
    outs = [(list(t.shape[1:]), str(t.element_type)) for t in outputs]
    dyn_in = [tensor_type_text([None] + s, e) for s, e in ins]
    dyn_out = [tensor_type_text([None] + s, e) for s, e in outs]
    out_sig = ", ".join(dyn_out)
    m = len(outs)
    variants = sorted(variants, reverse=True)
    lines = ["%c0 = arith.constant 0 : index", f"%n = tensor.dim %a0, %c0 : {dyn_in[0]}"]

    def static(size: int, shapes: list[tuple[list[int], str]]) -> list[str]:
        return [tensor_type_text([size] + s, e) for s, e in shapes]

    def call(k: int, args: list[str], size: int, fn: str, indent: str) -> str:
        lines.append(f"{indent}%y{k}:{m} = func.call @{fn}({', '.join(args)}) : ({', '.join(static(size, ins))}) -> ({', '.join(static(size, outs))})")
        return f"%y{k}"

    def chunks(indent: str) -> list[str]:
        """Every batch size: as many chunks of each size as fit, largest first."""
        lines.extend(f"{indent}%e{j} = tensor.empty(%n) : {t}" for j, t in enumerate(dyn_out))
        accs, begin = [f"%e{j}" for j in range(m)], "%c0"
        for k, (size, fn) in enumerate(variants):
            lines.extend(indent + line for line in (
                f"%s{k} = arith.constant {size} : index",
                f"%rem{k} = arith.subi %n, {begin} : index",
                f"%q{k} = arith.divui %rem{k}, %s{k} : index",
                f"%len{k} = arith.muli %q{k}, %s{k} : index",
                f"%end{k} = arith.addi {begin}, %len{k} : index",
            ))
            iters = ", ".join(f"%acc{k}_{j} = {a}" for j, a in enumerate(accs))
            lines.append(f"{indent}%r{k}:{m} = scf.for %i{k} = {begin} to %end{k} step %s{k} iter_args({iters}) -> ({out_sig}) {{")
            args = []
            for i, (shape, _) in enumerate(ins):
                offsets, sizes, strides = _slice(f"%i{k}", size, shape)
                lines.append(f"{indent}  %x{k}_{i} = tensor.extract_slice %a{i}[{offsets}] [{sizes}] [{strides}] : {dyn_in[i]} to {static(size, ins)[i]}")
                args.append(f"%x{k}_{i}")
            y = call(k, args, size, fn, indent + "  ")
            updated = []
            for j, (shape, _) in enumerate(outs):
                offsets, sizes, strides = _slice(f"%i{k}", size, shape)
                lines.append(f"{indent}  %u{k}_{j} = tensor.insert_slice {y}#{j} into %acc{k}_{j}[{offsets}] [{sizes}] [{strides}] : {static(size, outs)[j]} into {dyn_out[j]}")
                updated.append(f"%u{k}_{j}")
            lines.append(f"{indent}  scf.yield {', '.join(updated)} : {out_sig}")
            lines.append(f"{indent}}}")
            accs, begin = [f"%r{k}#{j}" for j in range(m)], f"%end{k}"
        return accs

    # a batch of a variant's size calls it on the inputs as they are (tensor.cast: no
    # copy) and returns at once; any other size goes on to the chunk loops
    lines.append("%n32 = arith.index_cast %n : index to i32")
    cases = ", ".join(f"{size}: ^exact{k}" for k, (size, _) in enumerate(variants))
    lines.append(f"cf.switch %n32 : i32, [default: ^chunks, {cases}]")
    for k, (size, fn) in enumerate(variants):
        lines.append(f"^exact{k}:")
        args = []
        for i in range(len(ins)):
            lines.append(f"%cx{k}_{i} = tensor.cast %a{i} : {dyn_in[i]} to {static(size, ins)[i]}")
            args.append(f"%cx{k}_{i}")
        y = call(100 + k, args, size, fn, "")
        casts = []
        for j in range(m):
            lines.append(f"%cy{k}_{j} = tensor.cast {y}#{j} : {static(size, outs)[j]} to {dyn_out[j]}")
            casts.append(f"%cy{k}_{j}")
        lines.append(f"return {', '.join(casts)} : {out_sig}")
    lines.append("^chunks:")
    results = chunks("")
    decls = [f"func.func private @{fn}({', '.join(static(size, ins))}) -> ({', '.join(static(size, outs))})" for size, fn in variants]
    args = ", ".join(f"%a{i}: {t}" for i, t in enumerate(dyn_in))
    body = "\n  ".join(lines + [f"return {', '.join(results)} : {out_sig}"])
    return "\n".join(decls) + f"\nfunc.func @{name}({args}) -> ({out_sig}) attributes {{{MARK}}} {{\n  {body}\n}}\n"


def _slice(at: str, size: int, shape: list[int]) -> tuple[str, str, str]:
    """Offsets, sizes and strides of the batch rows [at, at + size) of a tensor."""
    return ", ".join([at] + ["0"] * len(shape)), ", ".join(str(d) for d in [size] + shape), ", ".join(["1"] * (len(shape) + 1))
