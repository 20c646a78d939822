"""Program.layers and the per-layer driver (optc.api.LayerMethod): typed skip
reasons, selection, per-layer overrides, named-layer errors, matrix views of
grouped and depthwise convolutions."""

from dataclasses import dataclass

import numpy as np
import pytest

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, Status, build_options, option
from optc.errors import OptionError
from tests.conftest import lowered


def test_every_conv_kind_has_a_matrix_view_that_round_trips():
    _, p = lowered("cnn")
    layers = {layer.name: layer for layer in p.layers()}
    assert layers["dw.weight"].groups == 16 and layers["pw.weight"].groups == 2 and layers["stem.weight"].groups == 1
    assert layers["dw.weight"].shape == (16, 9)  # C × KH·KW
    assert layers["pw.weight"].shape == (16, 8)  # O × C/G·KH·KW
    assert layers["stem.weight"].shape == (16, 27)
    for layer in layers.values():
        assert layer.problem is None
        m = layer.matrix()
        assert m.shape == layer.shape
        np.testing.assert_array_equal(layer.from_matrix(m), p.params[layer.name])


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
    ("fc:factor=x", "expected float"),
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
