"""The method sketched in README "Writing a method" is real: under 100 lines, and
it keeps the contract (optc.testing) and composes with admm."""

import re

from optc.testing import check_method, run_method
from tests.conftest import REPO


def sketch_module():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Writing a method"):text.index("## Layout")]
    code = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "class Magnitude" in b)
    namespace: dict = {}
    exec(compile(code, "README-sketch", "exec"), namespace)
    return code, namespace


def test_sketch_is_under_100_lines_and_keeps_the_contract():
    code, ns = sketch_module()
    assert len(code.splitlines()) < 100
    runs = check_method(ns["Magnitude"](), options={"density": 0.3}, identity={"density": 1})
    mlp = runs[0]
    assert {c.layer for c in mlp.result.changes if c.changed} == {"0.weight", "2.weight", "4.weight"}
    assert mlp.program.structures["0.weight"].structure.density() == round(0.3 * 128 * 64) / (128 * 64)


def test_admm_solves_inside_the_sketch_structure():
    from optc.plugins.admm import Admm

    _, ns = sketch_module()
    magnitude = ns["Magnitude"]()
    before = lambda p, ctx: magnitude.apply(p, ns["MagnitudeOptions"](density=0.3), ctx)  # noqa: E731
    run = run_method(Admm(), {"iterations": 3}, "mlp", before=before)
    masks = {layer: s.mask() for layer, s in run.original.structures.items()}
    for layer, ref in run.result.reference_weights.items():
        assert not ref[~masks[layer]].any()  # linear weights: the parameter is the out×in matrix
