"""The ``optc`` command line. Errors users can cause print one line and exit
non-zero; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import click

from optc.errors import InputError, OptcError

MODEL_HELP = "MODEL is a torch.export archive (.pt2/.pt), a pkg.module:factory reference, or (with --trust) a pickled nn.Module."


class OptcGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        # torch.export's deprecation chatter is not the user's business.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
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


def calib_option(f):
    return click.option("--calib", type=click.Path(dir_okay=False, path_type=Path), metavar="DATA.npz", help="calibration samples for data-driven methods (admm; activation-aware bcr): x = inputs, batch first")(f)


def _set_quiet(ctx: click.Context, param: click.Parameter, quiet: bool) -> None:
    from optc.driver import set_quiet

    set_quiet(quiet)


def selection_options(f):
    """--plugins/--opt/--target/--target-opt, shared by compile and bench."""
    for decorator in reversed((
        click.option("--plugins", default="", metavar="A,B", help="compression methods to apply, in this order (see `optc plugins`)"),
        click.option("--opt", "opts", multiple=True, metavar="M.FIELD=V", help="set a method option, e.g. lowrank.rank=16 (repeatable)"),
        click.option("--target", default="cpu", show_default=True, help="compile target (see `optc targets`)"),
        click.option("--target-opt", "target_opts", multiple=True, metavar="T.FIELD=V", help="set a target option, e.g. vulkan.profile=valhall4"),
        click.option("--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="no progress or log lines on stderr (progress shows only on a terminal anyway)"),
    )):
        f = decorator(f)
    return f


def _split_plugins(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()] if value else []


@main.command()
@click.argument("model")
@selection_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="artifact path; the report goes beside it as .json [default: MODEL_NAME.vmfb]")
@click.option("--tolerance", type=float, default=None, help="max relative error of the artifact vs the compressed reference [default: 1e-4]")
@click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), help="write the IR before each failing method here")
@calib_option
@click.option("--eval", "eval_data", type=click.Path(dir_okay=False, path_type=Path), metavar="DATA.npz", help="labelled samples (x, y): report top-1 of the original model, the compressed reference and the artifact")
@model_options
def compile(model, plugins, opts, target, target_opts, output, tolerance, dump_ir, calib, eval_data, trust, input_shapes):
    """Compress MODEL with --plugins, compile it for --target, verify it, and write
    the artifact (.vmfb) and its report (.json).

    \b
    Example:
      optc compile --plugins lowrank --opt lowrank.energy=0.8 --target cpu model.pt2 -o model.vmfb
      optc compile --plugins bcr,admm --calib calib.npz --eval test.npz model.pt2 -o model.vmfb
    """
    from optc.api import parse_assignments
    from optc.driver import compile_model, select
    from optc.report import compile_report, write_bytes_atomic, write_json_atomic

    if tolerance is not None and not tolerance > 0:
        raise InputError(f"--tolerance {tolerance}: must be > 0")
    sel = select(_split_plugins(plugins), target, parse_assignments(opts, "--opt"), parse_assignments(target_opts, "--target-opt"))
    out = output or Path(Path(model.split(":")[-1]).stem + ".vmfb")
    if out.suffix != ".vmfb":
        raise InputError(f"-o {out}: the artifact name must end in .vmfb")
    compiled = compile_model(
        model, sel, trust=trust, input_shapes=input_shapes, tolerance=tolerance, dump_dir=dump_ir, calib=calib, eval_data=eval_data
    )
    report = compile_report(compiled, str(out))
    write_bytes_atomic(out, compiled.artifact.vmfb)
    write_json_atomic(out.with_suffix(".json"), report)
    _print_summary(report)


@main.command()
@click.argument("model")
@selection_options
@click.option("--batch", type=int, default=None, help="batch size: replaces the first dimension of every input [default: the example inputs']")
@click.option("--threads", type=int, default=2, show_default=True, help="threads for PyTorch and IREE alike")
@click.option("--min-rounds", type=int, default=20, show_default=True, help="at least this many interleaved timing rounds")
@click.option("--min-seconds", type=float, default=3.0, show_default=True, help="and at least this much timing work")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="write the bench report (JSON) here")
@click.option("--tolerance", type=float, default=None, help="max relative error of the artifacts vs their references [default: 1e-4]")
@calib_option
@model_options
def bench(model, plugins, opts, target, target_opts, batch, threads, min_rounds, min_seconds, json_out, tolerance, calib, trust, input_shapes):
    """Measure PyTorch eager, the dense IREE compile and the compressed IREE compile
    of MODEL side by side (same process, same threads, interleaved rounds), and
    print latency medians, speedups, FLOP reduction and realized efficiency.

    \b
    Example:
      optc bench --plugins lowrank --opt lowrank.rank=32 --batch 8 --threads 2 examples.models:mlp --json bench.json
    """
    import dataclasses

    from optc.bench import BURST, format_table, passive_openmp, set_threads, speedups, time_interleaved

    omp_policy = passive_openmp()  # before torch is imported
    import torch

    from optc.api import parse_assignments
    from optc.driver import compile_model, load_and_lower, log, select
    from optc.errors import TargetUnavailableError
    from optc.report import compile_report, write_json_atomic

    if batch is not None and batch <= 0:
        raise InputError(f"--batch {batch}: must be a positive integer")
    if threads <= 0:
        raise InputError(f"--threads {threads}: must be a positive integer")
    if min_rounds <= 0 or min_seconds < 0:
        raise InputError("--min-rounds must be > 0 and --min-seconds >= 0")
    sel = select(_split_plugins(plugins), target, parse_assignments(opts, "--opt"), parse_assignments(target_opts, "--target-opt"))
    ok, why = sel.target.runs_here(sel.target_options)
    if not ok:
        raise TargetUnavailableError(f"cannot time target {target!r} here: {why}")
    set_threads(threads)
    lowered = load_and_lower(model, trust, input_shapes, batch)
    log("dense compile")
    dense = compile_model(model, dataclasses.replace(sel, methods=[]), tolerance=tolerance, loaded_and_lowered=lowered)
    compressed = None
    if sel.methods:
        log("compressed compile")
        compressed = compile_model(model, sel, tolerance=tolerance, loaded_and_lowered=lowered, calib=calib)
    inputs = dense.program.example_inputs
    torch_inputs = [torch.from_numpy(x) for x in inputs]
    module = lowered[0].module
    runners = {"eager": lambda: module(*torch_inputs)}
    dense_session = sel.target.open(dense.artifact.vmfb, sel.target_options)
    runners["dense"] = lambda: dense_session.invoke(*inputs)
    if compressed is not None:
        comp_session = sel.target.open(compressed.artifact.vmfb, sel.target_options)
        runners["compressed"] = lambda: comp_session.invoke(*inputs)
    log(f"timing {', '.join(runners)} interleaved")
    with torch.no_grad():
        timings = time_interleaved(runners, min_rounds=min_rounds, min_seconds=min_seconds, burst=BURST, progress=log)
    latency = {k: t.as_dict() for k, t in timings.items()}
    rounds = len(timings["eager"].samples) // (BURST - 1)
    final = compressed or dense
    report = compile_report(final, None)
    report["kind"] = "bench"
    sp = speedups(latency)
    flop_reduction = report["totals"]["flop_reduction"]
    report["bench"] = {
        "batch": int(inputs[0].shape[0]) if inputs and inputs[0].ndim else None,
        "threads": threads,
        "omp_wait_policy": omp_policy,
        "rounds": rounds,
        "latency_ms": latency,
        "speedup": sp,
        "flop_reduction": flop_reduction,
        "realized_efficiency": sp["compressed_vs_dense"] / flop_reduction if compressed is not None else None,
        "params": {"dense": dense.program.total_params(), **({"compressed": compressed.program.total_params()} if compressed else {})},
        "artifact_bytes": {"dense": len(dense.artifact.vmfb), **({"compressed": len(compressed.artifact.vmfb)} if compressed else {})},
    }
    click.echo(format_table(report["bench"]))
    if json_out is not None:
        write_json_atomic(json_out, report)
        click.echo(f"report     {json_out}")


@main.command()
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="HTML file to write [default: REPORT.html]")
def report(report_json, output):
    """Render an optc JSON report (from compile or bench) as one self-contained
    HTML page with the summary, the per-layer table and plots.

    \b
    Example:
      optc report out/mlp.json -o out/mlp.html
    """
    from optc.html import render_html
    from optc.report import load_report, write_bytes_atomic

    if not report_json.exists():
        raise InputError(f"report not found: {report_json}")
    data = load_report(report_json)
    out = output or report_json.with_suffix(".html")
    write_bytes_atomic(out, render_html(data).encode())
    click.echo(f"wrote {out}")


def _print_summary(report: dict) -> None:
    from collections import Counter

    t = report["totals"]
    v = report["verification"]
    click.echo(f"artifact   {report['artifact']['path']} ({report['artifact']['bytes']:,} bytes, target {report['target']['name']})")
    click.echo(f"report     {Path(report['artifact']['path']).with_suffix('.json')}")
    for m in report["methods"]:
        done = sum(c["status"] == "changed" for c in m["changes"])
        reasons = Counter((c["reason"] or "other").replace("_", " ") for c in m["changes"] if c["status"] != "changed")
        why = f" ({', '.join(f'{n} {r}' for r, n in reasons.items())})" if reasons else ""
        click.echo(f"method     {m['name']}: {done} layer(s) changed, {len(m['changes']) - done} skipped{why}")
    if not report["methods"]:
        click.echo(f"method     none: the dense model ({t['params_before']:,} params, {_megabytes(t['param_bytes_before'])} of weights)")
    else:
        click.echo(f"params     {t['params_before']:,} -> {t['params_after']:,}; weights {_megabytes(t['param_bytes_before'])} (dense) -> {_megabytes(t['param_bytes_after'])}")
        fewer = f"{t['flop_reduction']:.2f}x fewer" if t["macs_after"] != t["macs_before"] else "unchanged"
        click.echo(f"FLOPs(MAC) {t['macs_before']:,} -> {t['macs_after']:,} ({fewer})")
    with_what = v.get("verified_with", "the artifact itself")
    checked, _, not_run = ("artifact", "", "") if with_what == "the artifact itself" else with_what.partition("; ")
    click.echo(
        f"verified   {checked} vs compressed reference: max rel err {v['compile_error']['max_rel']:.2e} "
        f"(tolerance {v['tolerance']:g}); compression vs original: {v['compression_error']['max_rel']:.2e}"
    )
    if not_run:
        click.echo(f"           {not_run}")
    if "accuracy" in report:
        a = report["accuracy"]
        click.echo(
            f"top-1      original {100 * a['original']:.2f}%, compressed reference {100 * a['compressed_reference']:.2f}%, "
            f"artifact {100 * a['artifact']:.2f}% ({a['samples']} samples of {a['path']})"
        )


def _megabytes(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


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
    try:
        session = tgt.open(artifact.read_bytes(), options)
    except InputError as e:
        raise InputError(f"{artifact}: {e}") from None
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

    from optc.calibration import read_arrays

    arrays = []
    for p in paths:
        data = read_arrays(p, f"input file {p}")
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
    from optc.driver import load_and_lower

    _, program = load_and_lower(model, trust, input_shapes)
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
