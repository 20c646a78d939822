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


def _compile_and_compare(model, p, options=None):
    t = CpuTarget()
    art = t.compile(p, options or CpuOptions())
    err = compare(t.open(art.vmfb, CpuOptions())(*p.example_inputs), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err
    return art


def _probe(name):
    from optc.load import load_model
    from optc.lower import lower

    model = load_model(f"tests.e2e.probe_models:{name}")
    return model, lower(model)


def test_fast_set_compiles_a_tensor_returned_beside_its_softmax():
    """Aggressive fusion made IREE reject this ('vector.store' op write affecting ... global resources)."""
    model, p = _probe("softmax_pair")
    assert _compile_and_compare(model, p).flags_used == "fast"


def test_fast_set_compiles_a_rank_one_lowrank_mlp():
    """Aggressive fusion made this one 'exceed the stack allocation limit'."""
    from optc.api import MethodContext
    from optc.plugins.lowrank import LowRank, LowRankOptions
    from optc.verify import with_weights

    model, p = lowered("mlp")
    result = LowRank().apply(p, LowRankOptions(rank=1), MethodContext())
    t = CpuTarget()
    art = t.compile(p, CpuOptions())
    assert art.flags_used == "fast"
    got = t.open(art.vmfb, CpuOptions())(*p.example_inputs)
    assert compare(got, eager_outputs(with_weights(model.module, result.reference_weights), p.example_inputs)).max_rel <= 1e-5


def test_a_fast_set_that_fails_falls_back_to_the_safe_set(monkeypatch):
    import optc.targets.cpu as cpu

    monkeypatch.setattr(cpu, "FAST_FLAGS", (*cpu.FAST_FLAGS, "--iree-dispatch-creation-enable-aggressive-fusion=true"))
    model, p = _probe("softmax_pair")
    art = _compile_and_compare(model, p)
    assert art.flags_used.startswith("safe (fast set failed: ") and "vector.store" in art.flags_used


def test_bad_cpu_names_and_flags_show_iree_own_line():
    _, p = lowered("mlp")
    with pytest.raises(CompileError, match="Unknown CPU for target architecture"):
        CpuTarget().compile(p, CpuOptions(cpu="no-such-cpu"))
    with pytest.raises(CompileError, match="Unknown command line argument '--no-such-flag'"):
        CpuTarget().compile(p, CpuOptions(flags=("--no-such-flag",)))


@pytest.mark.parametrize("assignments", [{"cpu": ""}, {"cpu": "sky lake"}, {"flags": "O3"}])
def test_empty_or_malformed_cpu_options_are_refused(assignments):
    from optc.api import build_options
    from optc.errors import OptionError

    with pytest.raises(OptionError, match="cpu: "):
        build_options("cpu", CpuOptions, assignments)
