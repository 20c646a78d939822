"""The package's own tests, written with optc's testing kit (``pytest`` in this folder)."""

import numpy as np

from optc.testing import check_method, run_method
from optc_fp16 import Fp16


def test_fp16_keeps_the_method_contract():
    runs = check_method(Fp16(), options={"min_size": 0})
    for run in runs:
        assert run.program.has_narrow_weights()  # compiled without const-eval: the artifact keeps the halves


def test_weights_are_stored_as_float16_and_small_ones_are_skipped():
    run = run_method(Fp16(), {"min_size": 1000}, "mlp")  # layers of 8192, 4096 and 320 weights
    changed = {c.layer for c in run.result.changes if c.changed}
    assert changed == {"0.weight", "2.weight"}
    assert run.program.params["0.weight.fp16"].dtype == np.float16
    assert "4.weight" in run.program.params and run.program.params["4.weight"].dtype == np.float32
