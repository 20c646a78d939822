"""cpu target: dense compiles of the example models reproduce PyTorch eager."""

import pytest

from optc.errors import CompileError
from optc.targets.cpu import FAST_FLAGS, CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs
from tests.conftest import lowered


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_dense_artifact_matches_eager(name):
    model, p = lowered(name)
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    assert art.vmfb[:8] and len(art.vmfb) > 1000
    err = compare(t.open(art.vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


def test_fast_flags_are_on_by_default_and_can_be_turned_off():
    t = CpuTarget()
    assert set(FAST_FLAGS) <= set(t.flags(CpuOptions()))
    assert not set(FAST_FLAGS) & set(t.flags(CpuOptions(fast=False)))
    assert "--iree-llvmcpu-target-cpu=host" in t.flags(CpuOptions())


def test_compiler_rejection_is_a_clean_error():
    _, p = lowered("mlp")
    with pytest.raises(CompileError, match="IREE llvm-cpu compile failed"):
        CpuTarget().compile(p, CpuOptions(cpu="no-such-cpu"))
