"""Progress lines: shown in place on a terminal, silent elsewhere and with --quiet."""

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
