"""optc's metadata inside an artifact, as IREE reflection attributes.

IREE copies the ``iree.reflection`` dictionary (string -> string) of an exported
function into the ``.vmfb``, next to its own ``iree.abi.declaration``;
``iree-dump-module`` prints it and the runtime hands it to apps in any language
(``VmFunction.reflection`` in Python, ``iree_vm_function_lookup_attr_by_name``
in C). optc writes these keys on ``main``:

  optc          JSON (schema ``optc.module/1``): optc_version, model, inputs and
                outputs [{name, shape, dtype}], labels, target {name, options},
                methods [{name, options}], totals (the report's params, bytes,
                MACs and flop_reduction)
  optc.inputs   the inputs in IREE's tool syntax, comma-separated: ``1x8x8xf32``
                (as in ``iree-run-module --input=1x8x8xf32=@x.bin`` for raw data)
  optc.outputs  the outputs, likewise
  optc.labels   class labels, comma-separated (only with ``--labels``)

The flat keys let an app without a JSON parser (the C app) read its shapes. The
numbers measured by running the artifact (verification error, top-1) stay in the
``.json`` report: they exist only after the artifact does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from optc.errors import InputError, first_line

SCHEMA = "optc.module/1"
KEY = "optc"

# MLIR element type -> numpy dtype name.
_DTYPES = {"f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16",
           "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "i1": "bool"}  # fmt: skip
_ELEMENT_TYPES = {v: k for k, v in _DTYPES.items()}


def tensor_types(types: Sequence[Any]) -> list[str]:
    """``tensor<1x8x8xf32>`` -> ``1x8x8xf32`` (IREE's tool syntax) for each MLIR type."""
    out = []
    for t in types:
        text = str(t)
        if not (text.startswith("tensor<") and text.endswith(">")):
            raise ValueError(f"not a ranked tensor type: {text}")
        out.append(text[len("tensor<") : -1])
    return out


def _signature(types: list[str], names: Sequence[str], prefix: str) -> list[dict[str, Any]]:
    if len(names) != len(types):
        names = [f"{prefix}{i}" for i in range(len(types))]
    sig = []
    for name, t in zip(names, types):
        *dims, elem = t.split("x")
        sig.append({"name": name, "shape": [int(d) if d != "?" else None for d in dims], "dtype": _DTYPES.get(elem, elem)})
    return sig


def describe(
    model_spec: str, loaded: Any, original: Any, program: Any, selection: Any, labels: Sequence[str] = (),
    index_ranges: dict[int, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The metadata of a compile: what ``annotate`` writes into the artifact
    (``index_ranges``: from ``lower.input_index_ranges(original)``, found here if not given)."""
    from optc import __version__
    from optc.driver import options_dict
    from optc.report import totals

    from optc.lower import input_index_ranges

    inputs, outputs = signature_types(program)
    signature = getattr(loaded.exported, "graph_signature", None)
    described_inputs = _signature(inputs, list(getattr(signature, "user_inputs", ())), "input")
    if index_ranges is None:
        index_ranges = input_index_ranges(original)
    for i, (low, high) in index_ranges.items():  # so `run` checks indices without the .json
        described_inputs[i]["index_range"] = [low, high]
    info = {
        "schema": SCHEMA,
        "optc_version": __version__,
        "model": model_spec,
        "inputs": described_inputs,
        "outputs": _signature(outputs, list(getattr(signature, "user_outputs", ())), "output"),
        "target": {"name": selection.target.name, "options": options_dict(selection.target_options)},
        "methods": [{"name": m.name, "options": options_dict(o)} for m, o in selection.methods],
        "totals": totals(original, program),
    }
    if labels:
        check_labels(program, labels)
        info["labels"] = list(labels)
    return info


def signature_types(program: Any) -> tuple[list[str], list[str]]:
    """The entry function's input and output types in IREE's tool syntax."""
    ftype = program.function_type
    return tensor_types(ftype.inputs), tensor_types(ftype.results)


def check_labels(program: Any, labels: Sequence[str]) -> None:
    """``--labels`` name the classes of a single batch x classes output, one each."""
    outputs = signature_types(program)[1]
    dims = outputs[0].split("x")[:-1] if len(outputs) == 1 else []
    if len(dims) != 2:
        raise InputError(f"--labels: the model's outputs ({', '.join(outputs)}) are not one batch x classes tensor")
    if dims[1] != str(len(labels)):
        raise InputError(f"--labels: {len(labels)} labels, but the model's output {outputs[0]} has {dims[1]} classes")
    if any(not label.strip() or "," in label for label in labels):
        raise InputError("--labels: labels must be non-empty")


def annotate(program: Any, info: dict[str, Any]) -> None:
    """Write ``info`` (from ``describe``) into ``program``'s entry function as
    ``iree.reflection`` attributes, which IREE carries into the ``.vmfb``."""
    from torch_mlir import ir

    attrs = {
        KEY: json.dumps(info, separators=(",", ":")),
        f"{KEY}.inputs": ",".join(_tool_type(s) for s in info["inputs"]),
        f"{KEY}.outputs": ",".join(_tool_type(s) for s in info["outputs"]),
    }
    if info.get("labels"):
        attrs[f"{KEY}.labels"] = ",".join(info["labels"])
    driver = info["target"]["options"].get("driver")
    if isinstance(driver, str) and driver != "auto":  # the IREE device to run it on, for apps without a JSON parser
        attrs[f"{KEY}.device"] = driver
    with program.context:
        program.func.attributes["iree.reflection"] = ir.DictAttr.get({k: ir.StringAttr.get(v) for k, v in attrs.items()})


def _tool_type(sig: dict[str, Any]) -> str:
    elem = _ELEMENT_TYPES.get(sig["dtype"], sig["dtype"])
    return "x".join([*("?" if d is None else str(d) for d in sig["shape"]), elem])


def read(vmfb: bytes | Path, function: str = "main") -> dict[str, str]:
    """The reflection attributes of ``function`` in an artifact (optc's and IREE's
    own, e.g. ``iree.abi.declaration``); InputError when it is not a loadable module."""
    import iree.runtime as rt

    data = Path(vmfb).read_bytes() if isinstance(vmfb, Path) else vmfb
    instance = rt.VmInstance()
    try:
        module = rt.VmModule.copy_buffer(instance, data)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"not an IREE module (.vmfb): {first_line(e)[:200]}") from None
    fn = module.lookup_function(function)
    if fn is None:
        raise InputError(f"the module has no function {function!r} (it has {', '.join(module.function_names)})")
    return dict(fn.reflection)


def recorded_target_options(described: dict[str, Any]) -> dict[str, str]:
    """The target options an artifact's metadata (or report) records, as the strings
    ``--target-opt`` takes; list-valued ones (extra compiler flags) do not matter to running it."""
    return {k: str(v) for k, v in described["target"]["options"].items() if not isinstance(v, list)}


def optc_info(reflection: dict[str, str]) -> dict[str, Any] | None:
    """optc's metadata from ``read``'s attributes, or None for a module optc did not annotate."""
    text = reflection.get(KEY)
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        raise InputError("the module's optc metadata is not valid JSON") from None
    if not isinstance(info, dict) or info.get("schema") != SCHEMA:
        raise InputError(f"the module's optc metadata has an unknown schema (expected {SCHEMA})")
    return info
