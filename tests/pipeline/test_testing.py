"""The testing kit catches a method that breaks the contract."""

import numpy as np
import pytest

from optc.api import LayerChange, Method, MethodResult
from optc.testing import check_artifact, check_report, run_method


class Careless(Method):
    """Reports only its first layer, and a reference weight it did not apply."""

    name = "careless"
    summary = "breaks the contract"

    def apply(self, program, options, ctx):
        first = program.layers()[0]
        wrong = program.params[first.param] * 2  # the program still computes with the original
        return MethodResult(self.name, [LayerChange(first.name, "doubled")], {first.name: wrong})


def test_check_report_catches_a_layer_left_out():
    run = run_method(Careless())
    with pytest.raises(AssertionError, match="changes cover"):
        check_report(run)


def test_check_artifact_catches_a_reference_the_program_does_not_compute():
    run = run_method(Careless())
    with pytest.raises(AssertionError, match="artifact vs reference"):
        check_artifact(run)
    assert np.isfinite(run.result.reference_weights["0.weight"]).all()
