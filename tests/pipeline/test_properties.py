"""Property-based tests (hypothesis): random shapes, dtypes, names and bytes fed
to the .npy/.npz loaders, the --input-shape parser and the --opt parser give a
correct result or one clean OptcError line, never another exception."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optc.api import build_options, parse_assignments
from optc.calibration import input_arrays, load_samples, read_arrays
from optc.errors import OptcError
from optc.load import MAX_INPUT_ELEMENTS, parse_input_shape
from optc.plugins.lowrank import LowRankOptions
from optc.targets.cpu import CpuOptions

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

dtypes = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(sizes=(16, 32, 64)),
                   hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(), hnp.byte_string_dtypes())
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x250, blacklist_characters="/\\\x00"), min_size=1, max_size=12)


def one_clean_line(e: OptcError, what: str) -> None:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text
    assert what in text, (what, text)


def _write(tmp: Path, data: bytes, suffix: str) -> Path:
    path = tmp / f"data{suffix}"
    path.write_bytes(data)
    return path


@SETTINGS
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".npy", ".npz", ".bin"]))
def test_random_bytes_are_refused_in_one_line(tmp_path, data, suffix):
    path = _write(tmp_path, data, suffix)
    try:
        read_arrays(path, "--input f")
    except OptcError as e:
        one_clean_line(e, "--input f")


@SETTINGS
@given(members=st.dictionaries(names, arrays, max_size=4), cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_npz_with_any_members_and_damage_loads_exactly_or_fails_cleanly(tmp_path, members, cut, flip):
    buf = io.BytesIO()
    try:
        np.savez(buf, **members)
    except (ValueError, zipfile.BadZipFile):  # numpy cannot write every name (e.g. duplicates after encoding)
        return
    raw = bytearray(buf.getvalue())
    intact = cut >= len(raw) and flip >= len(raw)
    if cut < len(raw):
        raw = raw[:cut]
    if flip < len(raw):
        raw[flip] ^= 0x5A
    path = _write(tmp_path, bytes(raw), ".npz")
    try:
        got = read_arrays(path, "--calib f")
    except OptcError as e:
        one_clean_line(e, "--calib f")
        return
    assert isinstance(got, dict)
    if intact:
        assert list(got) == list(members)
        for k, v in members.items():
            np.testing.assert_array_equal(got[k], v)
            assert got[k].dtype == v.dtype and got[k].dtype.kind in "biuf"
    for v in got.values():
        assert v.dtype.kind in "biuf"


@SETTINGS
@given(array=arrays)
def test_npy_of_any_dtype_loads_numbers_exactly_and_refuses_the_rest(tmp_path, array):
    buf = io.BytesIO()
    np.save(buf, array)
    path = _write(tmp_path, buf.getvalue(), ".npy")
    try:
        got = read_arrays(path, "--input f")
    except OptcError as e:
        assert array.dtype.kind not in "biuf"
        one_clean_line(e, "--input f")
        return
    assert array.dtype.kind in "biuf"
    np.testing.assert_array_equal(got, array)


@SETTINGS
@given(keys=st.lists(st.one_of(names, st.sampled_from(["x", "x0", "x1", "x2", "arg0", "arg1", "arg2", "y"])), unique=True, max_size=4),
       count=st.one_of(st.none(), st.integers(1, 3)))
def test_npz_inputs_are_taken_by_documented_names_only(keys, count):
    data = {k: np.full((1,), i, np.float32) for i, k in enumerate(keys)}
    try:
        got = input_arrays(data, count, "--input f.npz")
    except OptcError as e:
        one_clean_line(e, "--input f.npz")
        return
    n = len(got)
    assert count in (None, n)
    samples = sorted(k for k in keys if k != "y")  # labels of a sample file are ignored
    if sorted(keys) == sorted(f"arg{i}" for i in range(n)):
        order = [f"arg{i}" for i in range(n)]
    elif samples == ["x"]:
        order = ["x"]
    else:
        order = [f"x{i}" for i in range(n)]
        assert samples == sorted(order), (keys, n)
    assert [float(a[0]) for a in got] == [float(data[k][0]) for k in order]


@SETTINGS
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.int32]), hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)),
       extra=st.dictionaries(names, st.just(np.zeros(2, np.float32)), max_size=2), labels=st.booleans())
def test_sample_files_load_or_fail_cleanly(tmp_path, x, extra, labels):
    members = {"x": x, **extra}
    if labels:
        members["y"] = np.zeros(len(x), np.int64)
    path = tmp_path / "s.npz"
    np.savez(path, **members)
    example = [np.zeros((1, *x.shape[1:]), np.float32)]
    try:
        s = load_samples(path, example, "--calib")
    except OptcError as e:
        one_clean_line(e, "--calib")
        return
    assert s.inputs[0].dtype == np.float32 and s.inputs[0].shape == x.shape
    assert np.isfinite(s.inputs[0]).all()


dims = st.one_of(st.integers(-3, 10**13).map(str), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x700), max_size=4))


@SETTINGS
@given(parts=st.lists(dims, min_size=0, max_size=5), sep=st.sampled_from(["x", "X", "×", "*"]),
       dtype=st.one_of(st.none(), st.sampled_from(["float32", "int64", "bool", "float64", "", "complex"]), st.text(max_size=6)))
def test_input_shape_parser_is_exact_or_one_line(parts, sep, dtype):
    spec = sep.join(parts) + (f":{dtype}" if dtype is not None else "")
    try:
        shape, dt = parse_input_shape(spec)
    except OptcError as e:
        one_clean_line(e, "--input-shape")
        return
    assert sep in "xX" or len(parts) == 1
    assert shape == tuple(int(p) for p in parts) and all(d > 0 for d in shape)
    assert all(p.isascii() and p.isdigit() for p in parts)
    assert int(np.prod(shape, dtype=object)) <= MAX_INPUT_ELEMENTS
    assert dt == (dtype or "float32")


values = st.one_of(st.text(max_size=8), st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["１６", "٣٢", "1_6", "1e400", "-0", "true", "none", " 3", "inf", "nan"]))
fields = st.sampled_from(["rank", "reduction", "energy", "layers", "skip", "force", "nosuch", ""])


@SETTINGS
@given(pairs=st.lists(st.tuples(st.sampled_from(["lowrank", "", "x.y"]), fields, values,
                                st.sampled_from(["=", ":", ""])), max_size=4))
@example(pairs=[("lowrank", "rank", "\n", "="), ("lowrank", "rank", "\n", "=")])  # a field "rank\n" (found by a CI run)
@example(pairs=[("lowrank", "rank", "=", ""), ("x.y", "rank", "=", "")])  # owner "x", field "y.rank"
def test_opt_parser_gives_valid_options_or_one_line(pairs):
    raw = [f"{owner}.{field}{sep}{value}" for owner, field, sep, value in pairs]
    try:
        parsed = parse_assignments(raw, "--opt")
        options = build_options("lowrank", LowRankOptions, parsed.get("lowrank", {}))
    except OptcError as e:
        one_clean_line(e, "")
        return
    assert all(owner == "lowrank" for owner in parsed) or not parsed.get("lowrank")
    if options.rank is not None:
        assert isinstance(options.rank, int) and options.rank >= 1
    if options.reduction is not None:
        assert np.isfinite(options.reduction) and options.reduction > 1
    assert 0 < options.energy <= 1


@SETTINGS
@given(cpu=st.text(max_size=10), flags=st.text(max_size=20))
def test_cpu_target_options_are_valid_or_one_line(cpu, flags):
    try:
        options = build_options("cpu", CpuOptions, {"cpu": cpu, "flags": flags})
    except OptcError as e:
        one_clean_line(e, "cpu")
        return
    assert options.cpu and all(f.startswith("--") for f in options.flags)


@pytest.mark.parametrize("bad", ["１６", "٣٢", "1_6"])
def test_known_unicode_digits_are_not_integers(bad):
    with pytest.raises(OptcError):
        parse_input_shape(f"{bad}x2")
