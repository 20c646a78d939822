"""Typed method options: parsing, validation, and the messages users see; the
per-layer driver (LayerMethod): typed skip reasons, selection, per-layer
overrides, named-layer errors, progress."""

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import pytest

from optc.api import (
    LayerChange, LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, Status, build_options, describe_options, option, parse_assignments,
)
from optc.errors import OptionError, UnknownNameError
from tests.conftest import lowered


@dataclass
class Opts:
    rank: Optional[int] = option(None, "rank")
    keep: float = option(0.5, "keep rate")
    on: bool = option(False, "switch")
    names: tuple[str, ...] = option((), "patterns")
    mode: Literal["a", "b"] = option("a", "mode")

    def validate(self):
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep={self.keep}: must be in (0, 1]")


def test_values_are_converted_to_field_types():
    o = build_options("m", Opts, {"rank": "16", "keep": "0.25", "on": "true", "names": "a.*, b", "mode": "b"})
    assert (o.rank, o.keep, o.on, o.names, o.mode) == (16, 0.25, True, ("a.*", "b"), "b")
    assert build_options("m", Opts, {"rank": "none"}).rank is None


@pytest.mark.parametrize(
    "assign,message",
    [
        ({"rank": "abc"}, "m.rank='abc': expected int"),
        ({"keep": "2"}, "keep=2.0: must be in (0, 1]"),
        ({"on": "maybe"}, "expected a boolean"),
        ({"mode": "c"}, "allowed values are a, b"),
    ],
)
def test_bad_values_say_what_is_allowed(assign, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_options("m", Opts, assign)


def test_unknown_field_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown option m.nope; m options are: keep, mode, names, on, rank"):
        build_options("m", Opts, {"nope": "1"})


def test_parse_assignments_groups_by_owner_and_rejects_malformed():
    assert parse_assignments(["a.x=1", "a.y=2", "b.z=3"], "--opt") == {"a": {"x": "1", "y": "2"}, "b": {"z": "3"}}
    with pytest.raises(OptionError, match="expected NAME.FIELD=VALUE"):
        parse_assignments(["a=1"], "--opt")


def test_describe_options_documents_every_field():
    rows = describe_options(Opts)
    assert [r[0] for r in rows] == ["rank", "keep", "on", "names", "mode"]
    assert all(r[3] for r in rows)


# --------------------------------------------------------------------------- the per-layer driver (LayerMethod)


@dataclass
class ScaleOptions(SelectionOptions):
    OVERRIDABLE = ("factor",)
    factor: float = option(1.0, "multiply the weights by this")

    def validate(self):
        if self.factor <= 0:
            raise ValueError(f"factor={self.factor}: must be > 0")
        super().validate()


class Scale(LayerMethod):
    """A test method: scales each weight; refuses layers with fewer than 16 rows."""

    name = "scale"
    summary = "scale weights"
    Options = ScaleOptions

    def plan(self, layer, options, ctx):
        if layer.shape[0] < 16:
            return Skip(SkipReason.DOES_NOT_FIT, f"{layer.name} has {layer.shape[0]} rows")
        return Plan(f"scaled by {options.factor}", {"factor": options.factor}, matrix=layer.matrix() * options.factor)

    def rewrite(self, layer, plan, rw):
        rw.store(plan.matrix, suffix="scaled")
        return layer.from_matrix(plan.matrix)


def run(**opts):
    _, p = lowered("mlp")
    result = Scale().apply(p, build_options("scale", ScaleOptions, {k: str(v) for k, v in opts.items()}), MethodContext())
    return p, result


def test_driver_reports_every_layer_with_a_typed_status():
    p, result = run(skip="2.weight", override="0.weight:factor=2")
    by = {c.layer: c for c in result.changes}
    assert [c.layer for c in result.changes] == ["0.weight", "2.weight", "4.weight"]
    assert by["0.weight"].status == Status.CHANGED and by["0.weight"].details == {"factor": 2.0}
    assert by["2.weight"].reason is SkipReason.NOT_SELECTED
    assert by["4.weight"].reason is SkipReason.DOES_NOT_FIT and by["4.weight"].action == "skipped: 4.weight has 10 rows"
    assert by["4.weight"].as_dict()["reason"] == "does_not_fit" and by["4.weight"].as_dict()["status"] == "skipped"
    original = lowered("mlp")[1].params["0.weight"]
    np.testing.assert_allclose(result.reference_weights["0.weight"], 2 * original)
    assert set(result.reference_weights) == {"0.weight"}
    layers = {layer.name: layer for layer in p.layers()}
    assert layers["0.weight"].rewritten and layers["0.weight"].problem.reason is SkipReason.ALREADY_REWRITTEN


def test_a_layer_the_user_named_that_does_not_fit_is_an_error():
    with pytest.raises(OptionError, match="scale: 4.weight has 10 rows"):
        run(layers="4.weight")
    with pytest.raises(OptionError, match="scale: 4.weight has 10 rows"):
        run(override="4.*:factor=3")


@pytest.mark.parametrize("override, fragment", [
    ("fc", "expected PATTERN:KEY=V"),
    ("fc:size=2", "unknown key 'size'; allowed: factor"),
    ("fc:factor=x", "expected a finite float"),
    ("fc:factor=-1", "override fc: factor=-1.0: must be > 0"),
])
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(OptionError) as e:
        build_options("scale", ScaleOptions, {"override": override})
    assert fragment in str(e.value)


def test_progress_is_reported_per_layer():
    _, p = lowered("mlp")
    lines = []
    Scale().apply(p, ScaleOptions(), MethodContext(progress=lines.append))
    assert lines == ["scale: layer 1/3 0.weight", "scale: layer 2/3 2.weight", "scale: layer 3/3 4.weight"]
@dataclass
class _Numbers:
    n: int = option(1, "an int")
    f: float = option(1.0, "a float")


@pytest.mark.parametrize("assign", [{"n": "１６"}, {"n": "٣٢"}, {"n": "1_6"}, {"n": " 16"}, {"f": "inf"}, {"f": "nan"},
                                    {"f": "-Infinity"}, {"f": "1e400"}, {"f": "1_0.5"}])
def test_numbers_are_ascii_and_finite(assign):
    with pytest.raises(OptionError, match="expected"):
        build_options("m", _Numbers, assign)


def test_plain_numbers_still_parse():
    assert build_options("m", _Numbers, {"n": "-3", "f": ".5"}) == _Numbers(n=-3, f=0.5)
    assert build_options("m", _Numbers, {"f": "1e-3"}).f == 1e-3


def test_a_repeated_option_is_refused_not_silently_overwritten():
    with pytest.raises(OptionError, match=r"--opt lowrank.rank: given twice \('4' and '8'\)"):
        parse_assignments(["lowrank.rank=4", "lowrank.rank=8"], "--opt")


def test_lowrank_reduction_inf_is_refused():
    from optc.plugins.lowrank import LowRankOptions

    with pytest.raises(OptionError, match="reduction='inf'"):
        build_options("lowrank", LowRankOptions, {"reduction": "inf"})


def test_activation_scores_follow_the_score_option_and_need_calibration():
    from optc.api import MethodContext, activation_scores

    without, with_calib = MethodContext(), MethodContext(calibration=object())
    with pytest.raises(OptionError, match=r"bcr\.score=activation needs calibration data"):
        activation_scores("bcr", "activation", without)
    assert activation_scores("bcr", "auto", without) is False
    assert activation_scores("bcr", "auto", with_calib) is True
    assert activation_scores("bcr", "activation", with_calib) is True
    assert activation_scores("bcr", "magnitude", with_calib) is False


def test_a_change_that_says_skipped_must_carry_the_skipped_status():
    # the report counts layers by status; a plugin writing "skipped: …" as a
    # plain LayerChange would be counted as changed
    with pytest.raises(ValueError, match="says skipped but its status is CHANGED.*LayerChange.skipped"):
        LayerChange("fc.weight", "skipped: too small")
    skipped = LayerChange.skipped("fc.weight", Skip(SkipReason.NOT_PROFITABLE, "too small"))
    assert not skipped.changed and skipped.as_dict()["status"] == "skipped"
    assert LayerChange("fc.weight", "factorized rank 4").changed
