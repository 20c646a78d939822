"""antman: exact at full rank, grouped (interleaved block-diagonal) rewrite
matches its reference, fitting on calibration inputs beats the plain SVD on gate
error, bad options are one clear error, and it composes with time batching."""

import numpy as np
import pytest

from optc.api import MethodContext, SkipReason, Status, build_options
from optc.errors import OptionError
from optc.plugins.antman import AntMan, AntManOptions, fit_groups, fit_low_rank, gate_error, groups_dense
from optc.plugins.admm import Admm
from optc.structures import BlockColumnRow, LowRankFactors
from optc.testing import Run, check_artifact, compiled_outputs, options_for, synthetic_calibration
from optc.time_batching import time_batch
from optc.verify import compare, eager_outputs, verify
from tests.conftest import lowered, optc_cli

GATES = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"]


def apply(name, ctx=None, **opts):
    model, p = lowered(name)
    before = p.layer_stats()
    options = build_options("antman", AntManOptions, {k: str(v) for k, v in opts.items()})
    result = AntMan().apply(p, options, ctx or MethodContext())
    p.verify()
    return model, p, before, result


def test_full_rank_is_exact_and_only_gate_weights_change():
    model, p, _, result = apply("lstm", rank=10_000, force="true")
    changes = {c.layer: c for c in result.changes}
    assert [g for g in GATES if changes[g].status == Status.CHANGED] == GATES
    assert changes["fc.weight"].reason == SkipReason.NOT_SELECTED
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


def test_groups_cut_macs_by_g_and_the_artifact_matches_the_reference():
    model, p, before, result = apply("lstm", groups=4)
    after = p.layer_stats()
    for g in GATES:
        assert after[g].macs == before[g].macs // 4, g
        ref = result.reference_weights[g]
        w = model.module.state_dict()[g].numpy()
        kept = ref != 0
        np.testing.assert_array_equal(ref[kept], w[kept])  # the blocks are W's own entries
        assert kept.mean() == pytest.approx(0.25)
    # the interleave: row block 0 reads inputs 0, 4, 8, …
    ref = result.reference_weights["lstm.weight_hh_l0"]
    assert np.count_nonzero(ref[:64, 1::4]) == 0 and np.count_nonzero(ref[:64, 0::4]) > 0
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs, 1e-5)
    assert check.compile_error.max_rel <= 1e-5, check.compile_error


def test_a_rank_that_does_not_cut_macs_is_skipped_as_not_profitable():
    _, p, before, result = apply("lstm", rank=60)  # 60·(256+64) >= 256·64 on the 256×64 matrices
    changes = {c.layer: c for c in result.changes}
    hh = changes["lstm.weight_hh_l0"]
    assert hh.reason == SkipReason.NOT_PROFITABLE and "rank 60" in hh.action, hh
    assert p.layer_stats()["lstm.weight_hh_l0"].macs == before["lstm.weight_hh_l0"].macs
    _, _, _, result = apply("lstm", rank=40)  # 40·320 < 256·64: cheaper, rewritten
    assert {c.layer: c for c in result.changes}["lstm.weight_hh_l0"].status == Status.CHANGED


def test_a_reduction_no_rank_reaches_skips_the_matrix_unless_forced():
    # lstm: weight_ih_l0 is 256×16, so a 16x cut needs rank 4096 / (16·272) < 1; weight_hh_l0 (256×64) gets rank 3
    _, p, before, result = apply("lstm", reduction=16)
    changes = {c.layer: c for c in result.changes}
    ih = changes["lstm.weight_ih_l0"]
    assert ih.reason == SkipReason.DOES_NOT_FIT and "rank below 1" in ih.action, ih
    assert p.layer_stats()["lstm.weight_ih_l0"].macs == before["lstm.weight_ih_l0"].macs
    assert changes["lstm.weight_hh_l0"].status == Status.CHANGED
    _, _, _, result = apply("lstm", reduction=16, force="true")
    forced = {c.layer: c for c in result.changes}["lstm.weight_ih_l0"]
    assert forced.status == Status.CHANGED and forced.details["rank"] == 1


@pytest.mark.parametrize("form, structure", [({"rank": 8}, LowRankFactors), ({"groups": 4}, BlockColumnRow)])
def test_admm_quantizes_the_published_factors_to_int8(form, structure):
    model, p = lowered("lstm")
    ctx = MethodContext(calibration=synthetic_calibration(p, samples=8))
    AntMan().apply(p, options_for(AntMan(), form), ctx)
    published = p.structures["lstm.weight_hh_l0"]
    assert isinstance(published.structure, structure)
    stored = published.param
    original = p.clone()
    result = Admm().apply(p, options_for(Admm(), {"quant": "int8", "iterations": 5}), ctx)
    p.verify()
    change = {c.layer: c for c in result.changes}["lstm.weight_hh_l0"]
    assert change.status == Status.CHANGED and "inside the earlier method's structure, int8" in change.action
    levels = [n for n in p.params if n.startswith("lstm.weight_hh_l0.antman") and n.endswith(".levels")]
    assert len(levels) == 1 and p.params[levels[0]].dtype == np.int8, levels
    assert p.params[levels[0]].shape == p.params.get(stored, original.params[stored]).shape
    assert stored not in p.params  # the float32 factor/blocks were replaced by the int8 ones
    check_artifact(Run(model, original, p, result))


def test_reduction_sets_the_rank_for_the_requested_mac_cut():
    _, p, before, result = apply("lstm", reduction=8)
    after = p.layer_stats()
    for g in GATES:
        assert before[g].macs / after[g].macs >= 8, g


def test_calibration_fit_beats_the_plain_svd_on_gate_error():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 32))
    mix = rng.normal(size=(32, 32)) * np.linspace(3, 0.05, 32)  # strongly correlated, anisotropic inputs
    x = rng.normal(size=(2000, 32)) @ mix.T
    gram = x.T @ x / len(x)
    for rank in (4, 8):
        a, b = fit_low_rank(w, rank)
        af, bf = fit_low_rank(w, rank, (gram, w @ gram))
        plain, fitted = gate_error(w, (a @ b).T, gram), gate_error(w, (af @ bf).T, gram)
        assert fitted < 0.9 * plain, (rank, fitted, plain)
    blocks, fitted_blocks = fit_groups(w, 4), fit_groups(w, 4, (gram, w @ gram))
    assert gate_error(w, groups_dense(fitted_blocks, 48, 32), gram) < gate_error(w, groups_dense(blocks, 48, 32), gram)
    # at full rank, fitting is exact
    af, bf = fit_low_rank(w, 32, (gram, w @ gram), damp=0.0)
    np.testing.assert_allclose((af @ bf).T, w, atol=1e-8)


def test_calibrated_passes_over_the_recurrence_compile_and_match_the_reference():
    _, p0 = lowered("lstm")
    ctx = MethodContext(calibration=synthetic_calibration(p0, samples=16))
    model, p, _, result = apply("lstm", ctx, reduction=8, passes=2)
    assert all(c.details["fitted"] for c in result.changes if c.status == Status.CHANGED)
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs, 1e-4)
    assert check.compile_error.max_rel <= 1e-4, check.compile_error


def test_groups_that_do_not_divide_are_skipped_unless_named():
    _, _, _, result = apply("lstm", groups=3)
    assert all(c.reason == SkipReason.DOES_NOT_FIT for c in result.changes if c.layer in GATES)
    with pytest.raises(OptionError, match="groups=3 do not divide layer lstm.weight_hh_l0"):
        apply("lstm", groups=3, layers="lstm.weight_hh_l0")


@pytest.mark.parametrize("opt,match", [("groups=0", "groups=0"), ("rank=0", "rank=0"), ("reduction=1", "reduction=1")])
def test_bad_options_are_one_clear_line_and_no_file(tmp_path, opt, match):
    out = tmp_path / "m.vmfb"
    proc = optc_cli("compile", "examples.models:lstm", "--plugins", "antman", "--opt", f"antman.{opt}", "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error:") and match in lines[0], proc.stderr
    assert not out.exists()


def test_both_forms_on_one_matrix_is_an_error_and_override_chooses_per_matrix():
    with pytest.raises(OptionError, match="choose one form per matrix"):
        apply("lstm", groups=4, rank=8)
    _, p, before, result = apply("lstm", rank=8, override="lstm.weight_hh_*:rank=32", layers="lstm.weight_*")
    details = {c.layer: c.details for c in result.changes}
    assert details["lstm.weight_hh_l0"]["rank"] == 32 and details["lstm.weight_ih_l0"]["rank"] == 8


def test_composes_with_time_batching():
    model, p, _, result = apply("lstm_cells", rank=8)
    tb = {c.layer: c for c in time_batch(p).changes}
    assert tb["cell.weight_ih"].changed and tb["cell.weight_ih"].details["matmuls"] == 2
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs, 1e-5)
    assert check.compile_error.max_rel <= 1e-5, check.compile_error
