"""The driver: progress lines (in place on a terminal, silent elsewhere and
with --quiet), and what compile_model holds while IREE compiles."""

import io
import sys

import pytest

from optc import driver


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def stderr(monkeypatch):
    def use(stream):
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    yield use
    driver.set_quiet(False)


def test_progress_shows_in_place_on_a_terminal_and_log_clears_it(stderr):
    err = stderr(Terminal())
    driver.progress("bcr: layer 1/3 fc1.weight")
    driver.progress("bcr: layer 2/3 fc2.weight")
    driver.log("compiling for cpu")
    assert err.getvalue() == "\r\033[Koptc: bcr: layer 1/3 fc1.weight\r\033[Koptc: bcr: layer 2/3 fc2.weight\r\033[Koptc: compiling for cpu\n"


def test_no_progress_when_not_a_terminal(stderr):
    err = stderr(io.StringIO())
    driver.progress("bcr: layer 1/3 fc1.weight")
    driver.log("compiling for cpu")
    assert err.getvalue() == "optc: compiling for cpu\n"


def test_quiet_silences_progress_and_logs(stderr):
    err = stderr(Terminal())
    driver.set_quiet(True)
    driver.progress("bcr: layer 1/3 fc1.weight")
    driver.log("compiling for cpu")
    assert err.getvalue() == ""


def test_reference_weights_are_released_before_the_compile(monkeypatch):
    """The artifact is checked against eager outputs computed before the compile,
    so a method's reference weights (a low-rank layer's dense product is as big
    as the original weight) are not held while IREE compiles and runs."""
    sel = driver.select(["lowrank"], "cpu", {"lowrank": {"rank": "8"}}, {})
    method = sel.methods[0][0]
    results, held_while_compiling = [], []
    apply, compile_ = method.apply, sel.target.compile

    def spy_apply(*args, **kwargs):
        results.append(apply(*args, **kwargs))
        assert results[-1].reference_weights  # lowrank reports its layers' dense products
        return results[-1]

    def spy_compile(*args, **kwargs):
        held_while_compiling.append(sum(len(r.reference_weights) for r in results))
        return compile_(*args, **kwargs)

    monkeypatch.setattr(method, "apply", spy_apply)
    monkeypatch.setattr(sel.target, "compile", spy_compile)
    compiled = driver.compile_model("examples.models:mlp", sel)
    assert held_while_compiling == [0]
    check = compiled.verification
    assert check.passed and check.compression_error.max_rel > 1e-3  # checked against the rank-8 reference, not the original
