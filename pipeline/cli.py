"""The ``optc`` command line. Errors users can cause print one line and exit
non-zero; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import click

from optc.errors import InputError, OptcError, VerifyError

MODEL_HELP = "MODEL is a torch.export archive (.pt2/.pt), a pkg.module:factory reference, or (with --trust) a pickled nn.Module."


class OptcGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        # torch.export's deprecation chatter is not the user's business.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        try:
            return super().invoke(ctx)
        except OptcError as e:
            click.echo(f"optc: error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=OptcGroup)
@click.version_option(package_name="optc")
def main() -> None:
    """optc: a compression compiler for PyTorch models.

    \b
    Example:
      optc compile --plugins lowrank --opt lowrank.rank=16 --target cpu examples.models:mlp -o out/mlp.vmfb
    """


def model_options(f):
    f = click.option("--trust", is_flag=True, help="allow loading a pickled nn.Module (unpickling runs code from the file)")(f)
    f = click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE", help="example input shape, e.g. 1x3x32x32 or 2x16:int64 (repeat per input)")(f)
    return f


def _split_plugins(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()] if value else []


def _load_and_lower(model: str, trust: bool, input_shapes: Sequence[str]):
    from optc.driver import log
    from optc.load import load_model
    from optc.lower import lower

    log(f"loading {model}")
    loaded = load_model(model, trust=trust, input_shapes=input_shapes)
    log("lowering to linalg with torch-mlir")
    return loaded, lower(loaded)


@main.command()
@click.argument("model")
@click.option("--plugins", default="", metavar="A,B", help="compression methods to apply, in this order (see `optc plugins`)")
@click.option("--opt", "opts", multiple=True, metavar="M.FIELD=V", help="set a method option, e.g. lowrank.rank=16 (repeatable)")
@click.option("--target", default="cpu", show_default=True, help="compile target (see `optc targets`)")
@click.option("--target-opt", "target_opts", multiple=True, metavar="T.FIELD=V", help="set a target option, e.g. vulkan.profile=valhall4")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="artifact path; the report goes beside it as .json [default: MODEL_NAME.vmfb]")
@click.option("--tolerance", type=float, default=None, help="max relative error of the artifact vs the compressed reference [default: 1e-4]")
@click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), help="write the IR before each failing method here")
@model_options
def compile(model, plugins, opts, target, target_opts, output, tolerance, dump_ir, trust, input_shapes):
    """Compress MODEL with --plugins, compile it for --target, verify it, and write
    the artifact (.vmfb) and its report (.json).

    \b
    Example:
      optc compile --plugins lowrank --opt lowrank.energy=0.8 --target cpu model.pt2 -o model.vmfb
    """
    from optc.api import MethodContext, parse_assignments
    from optc.driver import apply_methods, log, merged_reference_weights, options_dict, select
    from optc.report import SCHEMA, layer_rows, totals, write_bytes_atomic, write_json_atomic
    from optc.verify import DEFAULT_TOLERANCE, verify

    if tolerance is not None and not tolerance > 0:
        raise InputError(f"--tolerance {tolerance}: must be > 0")
    methods = _split_plugins(plugins)
    sel = select(methods, target, parse_assignments(opts, "--opt"), parse_assignments(target_opts, "--target-opt"))
    out = output or Path(Path(model.split(":")[-1]).stem + ".vmfb")
    if out.suffix != ".vmfb":
        raise InputError(f"-o {out}: the artifact name must end in .vmfb")
    loaded, original = _load_and_lower(model, trust, input_shapes)
    program = original.clone()
    results = apply_methods(program, sel.methods, MethodContext(dump_dir=dump_ir), progress=log)
    log(f"compiling for {target}")
    artifact = sel.target.compile(program, sel.target_options)
    runnable, why = sel.target.runs_here(sel.target_options)
    if runnable:
        checked, checked_options, verified_with = artifact, sel.target_options, "the artifact itself"
    else:
        checked_options = sel.target.portable_options(sel.target_options)
        log(f"{why}; verifying a portable build ({options_dict(checked_options)}) of the same program instead")
        checked = sel.target.compile(program, checked_options)
        verified_with = f"a portable build {options_dict(checked_options)} ({why})"
    log("running it and PyTorch eager on the example inputs")
    compiled = sel.target.open(checked.vmfb, checked_options)(*program.example_inputs)
    check = verify(
        loaded.module, merged_reference_weights(results), compiled, program.example_inputs,
        tolerance if tolerance is not None else DEFAULT_TOLERANCE,
    )
    verification = check.as_dict()
    verification["verified_with"] = verified_with
    report = {
        "schema": SCHEMA,
        "kind": "compile",
        "model": model,
        "target": {"name": target, "options": options_dict(sel.target_options)},
        "methods": [
            {"name": m.name, "options": options_dict(o), "changes": [vars(c) for c in r.changes]}
            for (m, o), r in zip(sel.methods, results)
        ],
        "layers": layer_rows(original.layer_stats(), program.layer_stats(), results),
        "totals": totals(original, program),
        "verification": verification,
        "artifact": {"path": str(out), "bytes": len(artifact.vmfb), "compile_seconds": artifact.compile_seconds},
        "inputs": [{"shape": list(x.shape), "dtype": str(x.dtype)} for x in program.example_inputs],
    }
    if not check.passed:
        raise VerifyError(
            f"the artifact differs from the compressed reference: max relative error "
            f"{check.compile_error.max_rel:.3g} > tolerance {check.tolerance:g} (raise it with --tolerance)"
        )
    write_bytes_atomic(out, artifact.vmfb)
    write_json_atomic(out.with_suffix(".json"), report)
    _print_summary(report)


def _print_summary(report: dict) -> None:
    t = report["totals"]
    v = report["verification"]
    click.echo(f"artifact   {report['artifact']['path']} ({report['artifact']['bytes']:,} bytes, target {report['target']['name']})")
    click.echo(f"report     {Path(report['artifact']['path']).with_suffix('.json')}")
    for m in report["methods"]:
        done = [c for c in m["changes"] if not c["action"].startswith("skipped")]
        click.echo(f"method     {m['name']}: {len(done)} layer(s) changed, {len(m['changes']) - len(done)} skipped")
    click.echo(f"params     {t['params_before']:,} -> {t['params_after']:,}")
    click.echo(f"FLOPs(MAC) {t['macs_before']:,} -> {t['macs_after']:,} ({t['flop_reduction']:.2f}x fewer)")
    click.echo(
        f"verified   artifact vs compressed reference: max rel err {v['compile_error']['max_rel']:.2e} "
        f"(tolerance {v['tolerance']:g}); compression vs original: {v['compression_error']['max_rel']:.2e}"
    )


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "inputs", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path), help=".npy per input (repeat, in order), or one .npz holding arg0, arg1, …")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="write outputs to this .npy (one output) or .npz")
@click.option("--target", default=None, help="target the artifact was built for [default: from its .json report, else cpu]")
def run(artifact, inputs, output, target):
    """Run a compiled ARTIFACT on inputs from .npy/.npz files.

    \b
    Example:
      optc run model.vmfb --input x.npy --output y.npy
    """
    import numpy as np

    from optc.registry import load_registry
    from optc.report import load_report, write_bytes_atomic

    if not artifact.exists():
        raise InputError(f"artifact not found: {artifact}")
    sidecar = artifact.with_suffix(".json")
    expected = None
    target_options = {}
    if sidecar.exists():
        rep = load_report(sidecar)
        target = target or rep["target"]["name"]
        target_options = {k: str(v) for k, v in rep["target"]["options"].items() if not isinstance(v, list)}
        expected = rep.get("inputs")
    from optc.api import build_options
    from optc.errors import TargetUnavailableError

    target = target or "cpu"
    tgt = load_registry().target(target)
    ok, reason = tgt.available()
    if not ok:
        raise TargetUnavailableError(f"target {target!r} is not available: {reason}")
    options = build_options(target, tgt.Options, target_options)
    ok, reason = tgt.runs_here(options)
    if not ok:
        raise TargetUnavailableError(f"cannot run {artifact} here: {reason}")
    arrays = _read_inputs(inputs)
    if expected is not None:
        got = [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in arrays]
        if got != expected:
            raise InputError(f"inputs {_fmt(got)} do not match the artifact's inputs {_fmt(expected)}")
    session = tgt.open(artifact.read_bytes(), options)
    outs = session(*arrays)
    if output is not None:
        buf = __import__("io").BytesIO()
        if output.suffix == ".npz":
            np.savez(buf, **{f"out{i}": o for i, o in enumerate(outs)})
        elif len(outs) == 1:
            np.save(buf, outs[0])
        else:
            raise InputError(f"--output {output}: the module has {len(outs)} outputs; use a .npz file")
        write_bytes_atomic(output, buf.getvalue())
    for i, o in enumerate(outs):
        flat = o.ravel()
        click.echo(f"out{i} {o.dtype} {'x'.join(map(str, o.shape))}: {np.array2string(flat[:8], precision=4)}{' …' if flat.size > 8 else ''}")


def _fmt(sig: list[dict]) -> str:
    return ", ".join(f"{'x'.join(map(str, s['shape']))}:{s['dtype']}" for s in sig)


def _read_inputs(paths: Sequence[Path]) -> list:
    import numpy as np

    arrays = []
    for p in paths:
        if not p.exists():
            raise InputError(f"input file not found: {p}")
        try:
            data = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{p} is not a .npy/.npz array file: {e}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = sorted(data.files, key=lambda k: (len(k), k))
            arrays.extend(data[k] for k in keys)
        else:
            arrays.append(data)
    return arrays


@main.command()
@click.argument("model")
@click.option("--mlir", "show_mlir", is_flag=True, help="also print the linalg IR (weights elided)")
@model_options
def inspect(model, show_mlir, trust, input_shapes):
    """Print MODEL's weighted layers: op kind, weight shape, ops, params, FLOPs (MACs).

    \b
    Example:
      optc inspect examples.models:cnn
    """
    _, program = _load_and_lower(model, trust, input_shapes)
    stats = program.layer_stats()
    rows = [(s.layer, s.kind, "x".join(map(str, s.weight_shape)), str(s.ops), f"{s.params:,}", f"{s.macs:,}") for s in stats.values()]
    head = ("layer", "op", "weight", "ops", "params", "MACs")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        click.echo("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    click.echo(f"total: {program.total_params():,} params, {program.contraction_macs():,} MACs (all contractions)")
    if show_mlir:
        click.echo(program.to_text())


@main.command()
def plugins():
    """List the installed compression methods with their options.

    \b
    Example:
      optc plugins
    """
    from optc.api import describe_options
    from optc.registry import load_registry

    reg = load_registry()
    for name, m in sorted(reg.methods.items()):
        calib = " [needs --calib]" if m.needs_calibration else ""
        click.echo(f"{name}  ({reg.plugin_of['method:' + name]}){calib}\n    {m.summary}")
        for fname, tname, default, help_ in describe_options(m.Options):
            click.echo(f"    --opt {name}.{fname}={default!s}  ({tname}) {help_}")


@main.command()
def targets():
    """List the installed compile targets, their options, and whether each is available here.

    \b
    Example:
      optc targets
    """
    from optc.api import describe_options
    from optc.registry import load_registry

    reg = load_registry()
    for name, t in sorted(reg.targets.items()):
        ok, reason = t.available()
        click.echo(f"{name}  ({reg.plugin_of['target:' + name]}) {'available' if ok else 'unavailable: ' + reason}\n    {t.summary}")
        for fname, tname, default, help_ in describe_options(t.Options):
            click.echo(f"    --target-opt {name}.{fname}={default!s}  ({tname}) {help_}")


if __name__ == "__main__":
    main()
