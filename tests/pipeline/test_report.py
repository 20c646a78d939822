"""report: the artifact and its report are written as a pair (hash inside,
nothing half-written), and a report read back is complete and in range."""

import hashlib
import json
import os

import pytest

from optc.errors import InputError
from optc.report import load_report, write_artifact_pair

REPORT = {"schema": "optc.report/1", "kind": "compile", "model": "m", "target": {"name": "cpu", "options": {}},
          "methods": [], "layers": [], "totals": {}, "verification": {}, "artifact": {"path": "m.vmfb"}, "inputs": []}


def test_pair_carries_the_artifact_hash(tmp_path):
    vmfb, js = tmp_path / "m.vmfb", tmp_path / "m.json"
    write_artifact_pair(vmfb, b"new artifact", js, REPORT)
    assert vmfb.read_bytes() == b"new artifact"
    assert load_report(js)["artifact"]["sha256"] == hashlib.sha256(b"new artifact").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.vmfb"]


@pytest.mark.parametrize("failing", ["json-temp", "vmfb-temp", "json-rename", "vmfb-rename"])
def test_a_failure_anywhere_leaves_the_old_pair_or_nothing_new(tmp_path, monkeypatch, failing):
    vmfb, js = tmp_path / "m.vmfb", tmp_path / "m.json"
    vmfb.write_bytes(b"old artifact")
    js.write_text("old report")
    import optc.report as report

    real_write, real_replace = report._write_temp, os.replace

    def write_temp(path, data):
        if failing == f"{path.suffix[1:]}-temp":
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    def replace(src, dst):
        if failing == f"{str(dst).rsplit('.', 1)[1]}-rename":
            raise KeyboardInterrupt  # SIGINT/SIGTERM between the two renames
        return real_replace(src, dst)

    monkeypatch.setattr(report, "_write_temp", write_temp)
    monkeypatch.setattr(report.os, "replace", replace)
    with pytest.raises((OSError, KeyboardInterrupt)):
        write_artifact_pair(vmfb, b"new artifact", js, REPORT)
    assert vmfb.read_bytes() == b"old artifact"  # never a new artifact without its report
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in left if n.startswith(".")], left  # no temporary files
    if failing == "vmfb-rename":
        assert left == ["m.vmfb"]  # the new report that went first is withdrawn
    else:
        assert js.read_text() == "old report"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (json.dumps({k: v for k, v in REPORT.items() if k != "totals"}), "field 'totals' is missing"),
        (json.dumps({**REPORT, "layers": {}}), "field 'layers' is not a JSON array"),
        (json.dumps(REPORT)[:-1] + ', "big": ' + "9" * 320 + "}", "out of range"),
        (json.dumps(REPORT)[:-1] + ', "big": NaN}', "NaN is not a number"),
        ("{", "is not an optc report"),
    ],
)
def test_incomplete_or_out_of_range_reports_are_one_line(tmp_path, text, fragment):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(InputError, match="r.json") as e:
        load_report(path)
    assert fragment in str(e.value) and "\n" not in str(e.value)
