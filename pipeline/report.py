"""The JSON report (schema ``optc.report/1``).

Top-level keys of a compile report:
  schema        "optc.report/1"
  kind          "compile"
  model         the model path or reference
  target        {"name", "options"}
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
  artifact      {"path", "bytes", "compile_seconds"}
  inputs        [{"shape", "dtype"}]
  calibration   {"path", "samples"}                       (with --calib)
  accuracy      {"path", "samples", "original", "compressed_reference", "artifact"}
                top-1 in [0, 1] on --eval data            (with --eval)
FLOPs are counted as multiply-accumulates (MACs).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from optc.api import MethodResult
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
    wb = sum(s.macs for s in before.layer_stats().values())
    wa = sum(s.macs for s in after.layer_stats().values())
    mb, ma = before.contraction_macs(), after.contraction_macs()
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
    }


def compile_report(c: "Compiled", artifact_path: str | None) -> dict[str, Any]:
    """The report of one compile (also the base of a bench report)."""
    from optc.driver import options_dict

    verification = c.verification.as_dict()
    verification["verified_with"] = c.verified_with
    return {
        "schema": SCHEMA,
        "kind": "compile",
        "model": c.model_spec,
        "target": {"name": c.selection.target.name, "options": options_dict(c.selection.target_options)},
        "methods": [
            {"name": m.name, "options": options_dict(o), "changes": [ch.as_dict() for ch in r.changes]}
            for (m, o), r in zip(c.selection.methods, c.results)
        ],
        "passes": [{"name": r.method, "changes": [ch.as_dict() for ch in r.changes]} for r in c.passes],
        "layers": layer_rows(c.original.layer_stats(), c.program.layer_stats(), c.results),
        "totals": totals(c.original, c.program),
        "verification": verification,
        "artifact": {"path": artifact_path, "bytes": len(c.artifact.vmfb), "compile_seconds": c.artifact.compile_seconds},
        "inputs": [{"shape": list(x.shape), "dtype": str(x.dtype)} for x in c.program.example_inputs],
        **({"calibration": c.calibration} if c.calibration else {}),
        **({"accuracy": c.accuracy} if c.accuracy else {}),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: no partial file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_report(path: Path) -> dict[str, Any]:
    from optc.errors import InputError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not an optc report: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an optc report (expected \"schema\": \"{SCHEMA}\")")
    return data
