"""Typed method options: parsing, validation, and the messages users see."""

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from optc.api import build_options, describe_options, option, parse_assignments
from optc.errors import OptionError, UnknownNameError


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
