"""The JSON report (schema ``optc.report/1``).

Top-level keys of a compile report:
  schema        "optc.report/1"
  kind          "compile"
  model         the model path or reference
  target        {"name", "options", "flags_used"?}   flags_used: which flag set built the
                artifact ("fast", "safe", or "safe (fast set failed: <IREE's error>)")
  methods       [{"name", "options", "changes": [{"layer", "action", "status", "reason", "details"}]}]
                status "changed" or "skipped"; reason (skipped only) an optc.api.SkipReason
                name in lower case, e.g. "does_not_fit", "already_rewritten"
  passes        [{"name", "changes": [...]}]  built-in passes run after the methods, changes as
                in methods; "time_batching": input projections batched over all steps
                (details "steps"), recurrent weights skipped with the reason
  layers        [{"layer", "kind", "weight_shape", "ops_before", "ops_after",
                  "params_before", "params_after", "macs_before", "macs_after", "methods"}]
  totals        {"params_before", "params_after", "param_bytes_before", "param_bytes_after",
                 "macs_before", "macs_after", "weighted_macs_before", "weighted_macs_after",
                 "flop_reduction"}
  verification  {"compile_error": {"max_abs", "max_rel"}, "compression_error": {...},
                 "tolerance", "passed"}
  artifact      {"path", "bytes", "compile_seconds", "sha256"}   sha256 of the .vmfb written
                beside this report (compile only; `optc run` refuses a mismatched pair)
  inputs        [{"shape", "dtype", "index_range"?}]   index_range: [low, high) of an integer
                input that indexes a table (embedding); `optc run` refuses values outside it
  calibration   {"path", "samples"}                       (with --calib)
  accuracy      {"path", "samples", "original", "compressed_reference", "artifact"}
                top-1 in [0, 1] on --eval data            (with --eval)
  simulation    {"simulator", "array", "layers": [{"op", "layer", "batch", "gemm", "nm", "cycles", …}],
                 "totals": {"cycles", "seconds", …}}      (--target sim: targets/sim.py;
                 drnet: the dispatcher plus its costliest variant, + "variants": {name: totals},
                 "variant_simulated")
FLOPs are counted as multiply-accumulates (MACs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from optc.api import MethodResult
from optc.dynamic_batch import batch_sizes, example_variant, is_batch_dispatch
from optc.errors import first_line
from optc.program import LayerStats, Program

if TYPE_CHECKING:
    from optc.driver import Compiled

SCHEMA = "optc.report/1"


def layer_rows(before: dict[str, LayerStats], after: dict[str, LayerStats], results: Sequence[MethodResult]) -> list[dict[str, Any]]:
    touched: dict[str, list[str]] = {}
    for r in results:
        for c in r.changes:
            if c.changed:
                touched.setdefault(c.layer, []).append(r.method)
    rows = []
    for name, b in before.items():
        a = after.get(name)
        rows.append(
            {
                "layer": name,
                "kind": b.kind,
                "weight_shape": list(b.weight_shape),
                "ops_before": b.ops,
                "ops_after": a.ops if a else 0,
                "params_before": b.params,
                "params_after": a.params if a else 0,
                "macs_before": b.macs,
                "macs_after": a.macs if a else 0,
                "methods": touched.get(name, []),
            }
        )
    return rows


def totals(before: Program, after: Program) -> dict[str, Any]:
    after = example_variant(after)
    wb = sum(s.macs for s in before.layer_stats().values())
    wa = sum(s.macs for s in after.layer_stats().values())
    mb, ma = before.contraction_macs(), after.contraction_macs()
    dynamic = None
    if after.callees():  # a variant is chosen per input at run time: no single MAC count
        own = ma
        per_callee = {name: after.function(name).contraction_macs() for name in after.callees()}
        dynamic = {
            "callee_macs": per_callee,
            "macs_min": own + min(per_callee.values()),
            "macs_max": own + max(per_callee.values()),
            "note": "the program picks a callee per input at run time; its average MACs are measured on --eval data",
        }
        ma = wa = None
    return {
        "params_before": before.total_params(),
        "params_after": after.total_params(),
        "param_bytes_before": before.param_bytes(),
        "param_bytes_after": after.param_bytes(),
        "macs_before": mb,
        "macs_after": ma,
        "weighted_macs_before": wb,
        "weighted_macs_after": wa,
        "flop_reduction": mb / ma if ma else None,
        **({"dynamic": dynamic} if dynamic else {}),
    }


def rows_variant(program: Program) -> Program:
    """What the per-layer rows describe: the variant totals describe, or for a module
    that picks a callee per input (drnet), its most expensive callee."""
    described = example_variant(program)
    return described if described is not program else program.largest_variant()


def compile_report(c: "Compiled", artifact_path: str | None) -> dict[str, Any]:
    """The report of one compile (also the base of a bench report)."""
    from optc.driver import options_dict

    verification = c.verification.as_dict()
    verification["verified_with"] = c.verified_with
    dynamic = is_batch_dispatch(c.program)
    return {
        "schema": SCHEMA,
        "kind": "compile",
        "model": c.model_spec,
        "target": {
            "name": c.selection.target.name,
            "options": options_dict(c.selection.target_options),
            **({"flags_used": c.artifact.flags_used} if c.artifact.flags_used else {}),
        },
        "methods": [
            {"name": m.name, "options": options_dict(o), "changes": [ch.as_dict() for ch in r.changes]}
            for (m, o), r in zip(c.selection.methods, c.results)
        ],
        "passes": [{"name": r.method, "changes": [ch.as_dict() for ch in r.changes]} for r in c.passes],
        "layers": layer_rows(c.original.layer_stats(), rows_variant(c.program).layer_stats(), c.results),
        "totals": totals(c.original, c.program),
        "verification": verification,
        "artifact": {"path": artifact_path, "bytes": len(c.artifact.vmfb), "compile_seconds": c.artifact.compile_seconds},
        "inputs": input_signature(c.program.example_inputs, c.index_ranges, dynamic_batch=dynamic),
        **({"dynamic_batch": {"batch_sizes": batch_sizes(c.program), "verified_at_batch": int(c.program.example_inputs[0].shape[0]),
                              "chunks_max_rel_error": c.chunks_max_rel}} if dynamic else {}),
        **({"calibration": c.calibration} if c.calibration else {}),
        **({"accuracy": c.accuracy} if c.accuracy else {}),
        **c.artifact.extra_report,
    }


def input_signature(inputs: Sequence[Any], index_ranges: dict[int, tuple[int, int]], dynamic_batch: bool = False) -> list[dict[str, Any]]:
    """The report's ``inputs``: shape (batch None when any batch runs) and dtype
    of each, and the valid ``index_range`` [low, high) of integer inputs that index a table."""
    return [
        {"shape": [None] * dynamic_batch + list(x.shape[dynamic_batch:]), "dtype": str(x.dtype),
         **({"index_range": list(index_ranges[i])} if i in index_ranges else {})}
        for i, x in enumerate(inputs)
    ]


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, report_bytes(data))


def report_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: no partial file on failure."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def write_artifact_pair(vmfb_path: Path, vmfb: bytes, json_path: Path, report: dict[str, Any]) -> None:
    """Write an artifact and its report as a pair: the report carries the
    artifact's sha256 (``optc run`` checks it). Both go to temporary files
    first; then, holding an exclusive lock on the folder (so two compiles to the
    same -o cannot interleave their renames), the .json is renamed before the
    .vmfb. A failure in between leaves the new .json beside the old .vmfb, which
    the hash exposes; it is removed, so no report describes the wrong artifact."""
    import fcntl

    report = {**report, "artifact": {**report["artifact"], "sha256": artifact_sha256(vmfb)}}
    vmfb_path.parent.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        temps.append(_write_temp(json_path, report_bytes(report)))
        temps.append(_write_temp(vmfb_path, vmfb))
        folder = os.open(vmfb_path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            os.replace(temps[0], json_path)
            try:
                os.replace(temps[1], vmfb_path)
            except BaseException:
                _unlink(json_path)
                raise
        finally:
            os.close(folder)  # releases the lock
    except BaseException:
        for t in temps:
            _unlink(t)
        raise


def artifact_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a hidden temporary file beside ``path`` (removed on any failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_REQUIRED = {  # top-level key -> its JSON type, in every report optc writes
    "schema": str, "kind": str, "model": str, "target": dict, "methods": list, "layers": list,
    "totals": dict, "verification": dict, "artifact": dict, "inputs": list,
}
_LIMIT = 2**63  # beyond any count optc writes; larger integers do not fit a float


def load_report(path: Path) -> dict[str, Any]:
    """A report as written by optc, or one InputError line naming what is wrong."""
    from optc.errors import InputError

    try:
        data = json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
    except (OSError, ValueError, RecursionError) as e:
        raise InputError(f"{path} is not an optc report: {first_line(e)}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an optc report (expected \"schema\": \"{SCHEMA}\")")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            what = "is missing" if key not in data else f"is not a JSON {'object' if kind is dict else 'array' if kind is list else 'string'}"
            raise InputError(f"{path} is not a complete optc report: field {key!r} {what}")
    bad = _out_of_range(data, "")
    if bad:
        raise InputError(f"{path}: the number at {bad} is out of range for a report")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a report holds")


def _out_of_range(value: Any, where: str) -> str | None:
    """The JSON path of the first integer too large to be a float, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return where or "/" if abs(value) >= _LIMIT else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _out_of_range(v, f"{where}/{k}")
        if found:
            return found
    return None
