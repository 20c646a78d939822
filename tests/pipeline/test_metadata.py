"""optc.metadata: the artifact's own description in IREE reflection attributes,
as IREE's tools and runtime read it, and `optc inspect ART.vmfb`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optc.errors import InputError
from optc.metadata import SCHEMA, annotate, check_labels, describe, optc_info, read
from optc.targets.cpu import WINOGRAD_MIN_OUTPUT
from tests.conftest import lowered, optc_cli

DIGITS = [str(d) for d in range(10)]
WORDS = "zero,one,two,three,four,five,six,seven,eight,nine"


def _cpu_selection(methods=()):
    from optc.driver import select

    return select(list(methods), "cpu", {}, {})


def _compile(program) -> bytes:
    sel = _cpu_selection()
    return sel.target.compile(program, sel.target_options).vmfb


@pytest.fixture(scope="module")
def annotated():
    """(info, vmfb) of examples.models:mlp annotated with labels and compiled for the CPU."""
    model, program = lowered("mlp")
    _, original = lowered("mlp")
    info = describe("examples.models:mlp", model, original, program, _cpu_selection(), DIGITS)
    annotate(program, info)
    return info, _compile(program)


def test_describe_names_the_signature_and_the_compile(annotated):
    info, _ = annotated
    assert info["schema"] == SCHEMA and info["optc_version"] == __import__("optc").__version__
    assert info["model"] == "examples.models:mlp"
    assert info["inputs"] == [{"name": "input", "shape": [4, 256], "dtype": "float32"}]
    assert [(o["shape"], o["dtype"]) for o in info["outputs"]] == [([4, 10], "float32")]
    assert info["target"] == {"name": "cpu", "options": {"cpu": "host", "fast": True, "winograd": WINOGRAD_MIN_OUTPUT, "flags": [], "driver": "auto"}}
    assert info["methods"] == [] and info["labels"] == DIGITS
    macs = 4 * (256 * 512 + 512 * 256 + 256 * 10)
    assert info["totals"]["macs_before"] == info["totals"]["macs_after"] == macs


def test_runtime_reads_the_metadata_back(annotated):
    info, vmfb = annotated
    reflection = read(vmfb)
    assert optc_info(reflection) == info  # the whole JSON round-trips through the .vmfb
    assert reflection["optc.inputs"] == "4x256xf32"
    assert reflection["optc.outputs"] == "4x10xf32"
    assert reflection["optc.labels"] == ",".join(DIGITS)
    assert "tensor<4x256xf32>" in reflection["iree.abi.declaration"]  # IREE's own key is kept


def test_the_driver_the_target_chose_is_in_the_metadata():
    """`compile` resolves cpu.driver=auto before annotating: the JSON and the
    plain ``optc.device`` attribute (for C apps) name the driver to run it on."""
    import dataclasses

    model, program = lowered("mlp")
    _, original = lowered("mlp")
    sel = _cpu_selection()
    sel = dataclasses.replace(sel, target_options=sel.target.resolve_options(program, sel.target_options))
    info = describe("examples.models:mlp", model, original, program, sel)
    annotate(program, info)
    reflection = read(_compile(program))
    assert info["target"]["options"]["driver"] == "local-sync"  # 0.53 M MACs per call
    assert reflection["optc.device"] == "local-sync"


def test_iree_dump_module_prints_the_metadata(annotated, tmp_path):
    _, vmfb = annotated
    path = tmp_path / "m.vmfb"
    path.write_bytes(vmfb)
    tool = Path(sys.executable).parent / "iree-dump-module"
    text = subprocess.run([str(tool), str(path)], capture_output=True, text=True, check=True).stdout
    assert "optc.inputs: 4x256xf32" in text
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("optc: "))
    assert json.loads(line[len("optc: ") :])["schema"] == SCHEMA


def test_a_module_without_optc_metadata_reads_as_none():
    import iree.compiler as ic

    vmfb = ic.compile_str(
        "func.func @main(%x: tensor<2xf32>) -> tensor<2xf32> { return %x : tensor<2xf32> }",
        target_backends=["llvm-cpu"],
        extra_args=["--iree-llvmcpu-target-cpu=generic"],
    )
    reflection = read(vmfb)
    assert "iree.abi.declaration" in reflection and optc_info(reflection) is None


def test_read_refuses_what_is_not_a_module():
    with pytest.raises(InputError, match="not an IREE module"):
        read(os.urandom(3000))


@pytest.mark.parametrize(
    "labels, fragment",
    [(DIGITS[:3], "3 labels, but the model's output 4x10xf32 has 10 classes"), (DIGITS[:9] + [" "], "must be non-empty")],
)
def test_labels_must_name_each_class(labels, fragment):
    _, program = lowered("mlp")
    with pytest.raises(InputError, match=fragment):
        check_labels(program, labels)


def feature_map():
    """A model whose output is a feature map, not batch x classes."""
    import torch

    return torch.nn.Conv2d(1, 2, 3).eval(), (torch.zeros(1, 1, 5, 5),)


def test_labels_need_a_batch_x_classes_output():
    from optc.driver import load_and_lower

    _, program = load_and_lower("tests.pipeline.test_metadata:feature_map", False, ())
    with pytest.raises(InputError, match=r"outputs \(1x2x3x3xf32\) are not one batch x classes tensor"):
        check_labels(program, ["a", "b"])


# --------------------------------------------------------------------------- optc inspect ART.vmfb


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "mlp.vmfb"
    optc_cli("compile", "--plugins", "lowrank", "--opt", "lowrank.rank=16", "--labels", WORDS, "examples.models:mlp", "-o", str(out), check=True)
    return out


def test_inspect_prints_what_the_artifact_says(mlp_artifact):
    lines = optc_cli("inspect", str(mlp_artifact), check=True).stdout.splitlines()
    field = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines if ln.strip()}
    assert field["function"].startswith("sync func @main(") and "tensor<4x256xf32>" in field["function"]
    assert field["optc"].startswith(__import__("optc").__version__)
    assert field["input"] == "input: 4x256 float32"
    assert field["output"].endswith(": 4x10 float32")
    assert field["labels"] == WORDS.replace(",", ", ")
    assert field["target"].startswith("cpu cpu=host")
    assert field["method"].startswith("lowrank ") and "rank=16" in field["method"]
    report = json.loads(mlp_artifact.with_suffix(".json").read_text())["totals"]
    assert field["params"].startswith(f"{report['params_before']:,} -> {report['params_after']:,}")


def test_inspect_bad_artifacts(tmp_path):
    junk = tmp_path / "junk.vmfb"
    junk.write_bytes(os.urandom(3000))
    for path, fragment in [(junk, "not an IREE module"), (tmp_path / "none.vmfb", "artifact not found")]:
        proc = optc_cli("inspect", str(path))
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("optc: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and fragment in errors[0] and str(path.name) in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
