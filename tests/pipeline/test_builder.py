"""Every public builder, compiled with IREE for the CPU in one tiny program and
compared with numpy / PyTorch on the same inputs."""

import numpy as np
import torch
import torch.nn.functional as F
from torch_mlir import ir
from torch_mlir.dialects import func

from optc.program import Program
from optc.testing import compiled_outputs

RNG = np.random.default_rng(0)
X = RNG.normal(size=(1, 4, 8, 8)).astype(np.float32)  # an NCHW image
M = RNG.normal(size=(3, 5)).astype(np.float32)  # a matrix
W_CONV = RNG.normal(size=(6, 4, 3, 3)).astype(np.float32)
W_DW = RNG.normal(size=(4, 3, 3)).astype(np.float32)
W_GROUP = RNG.normal(size=(6, 2, 3, 3)).astype(np.float32)
W_1X1 = RNG.normal(size=(5, 4)).astype(np.float32)
W_LIN = RNG.normal(size=(5, 2)).astype(np.float32)
GATHER = np.array([4, 0, 2], dtype=np.int32)
POSITIONS = np.array([2, -1, 0, -1, 1, -1, -1], dtype=np.int32)  # output 0 <- column 2, output 2 <- 0, output 4 <- 1


def program_of(inputs, build):
    """A one-function program taking ``inputs`` and returning what ``build(b, *args)`` makes."""
    ctx = ir.Context()
    types = ", ".join(f"tensor<{'x'.join(map(str, x.shape))}xf32>" for x in inputs)
    args = ", ".join(f"%a{i}: tensor<{'x'.join(map(str, x.shape))}xf32>" for i, x in enumerate(inputs))
    module = ir.Module.parse(f"func.func @main({args}) -> ({types}) {{ return {', '.join(f'%a{i}' for i in range(len(inputs)))} : {types} }}", context=ctx)
    p = Program(module=module, params={}, example_inputs=tuple(inputs))
    ret = list(p.ops())[-1]
    with p.at(ret) as b:
        outs = build(b, *p.body.arguments)
        func.ReturnOp(outs)
    ret.erase()
    fn = p.func
    inputs_t = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value).inputs
    with ctx:
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs_t, [v.type for v in outs]))
    p.verify()
    return p


def conv(x, w, groups=1, stride=1):
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, groups=groups).numpy()


def test_builders_compile_and_match_numpy():
    def build(b, x, m):
        gathered = b.gather(m, GATHER, dim=1)  # 3×3: columns 4, 0, 2
        return [
            b.sum(m, [1]),  # a reduction generic
            b.conv2d(x, b.constant("w.conv", W_CONV), strides=2),
            b.depthwise_conv2d(x, b.constant("w.dw", W_DW)),
            b.grouped_conv2d(x, b.constant("w.group", W_GROUP), groups=2),
            b.conv1x1(x, b.constant("w.1x1", W_1X1)),
            gathered,
            b.scatter_add(gathered, POSITIONS, dim=1, init=b.zeros((3, 7), like=m)),
            b.concat([b.slice(m, [0, 1], [3, 2]), b.slice(m, [0, 0], [3, 1])], dim=1),
            b.linear(b.transpose(m, [1, 0]), b.constant("w.lin", W_LIN[:3]), b.zeros((5, 2), like=m)),
        ]

    p = program_of([X, M], build)
    got = compiled_outputs(p)
    scattered = np.zeros((3, 7), np.float32)
    for o, pos in enumerate(POSITIONS):
        if pos >= 0:
            scattered[:, o] = M[:, GATHER][:, pos]
    want = [
        M.sum(axis=1),
        conv(X, W_CONV, stride=2),
        conv(X, W_DW[:, None], groups=4),
        conv(X, W_GROUP, groups=2),
        conv(X, W_1X1[:, :, None, None]),
        M[:, GATHER],
        scattered,
        np.concatenate([M[:, 1:3], M[:, 0:1]], axis=1),
        M.T @ W_LIN[:3],
    ]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (i, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"output {i}")


def test_generic_rejects_iterators_that_do_not_match_its_maps():
    import pytest

    def build(b, x, m):
        with pytest.raises(ValueError, match="2 iterator types for 1 loop dims"):
            b.generic([m], b.zeros((3,), like=m), ["(d0) -> (d0)", "(d0) -> (d0)"], lambda v, acc: v, iterators=["parallel", "reduction"])
        return [m]

    program_of([X, M], build)
