"""The ``optc`` command line. Errors users can cause print one line and exit
non-zero; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import os
import signal
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
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            return super().invoke(ctx)
        except OptcError as e:
            if e.detail and (ctx.obj or {}).get("verbose"):
                click.echo(e.detail.rstrip(), err=True)
            click.echo(f"optc: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            # Raised through every write and child process, so temporary files
            # are removed and iree-compile is killed on the way out.
            click.echo("optc: interrupted", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("optc: terminated", err=True)
            sys.exit(143)
        finally:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so cleanup runs the same way."""


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cleanup, not one per signal
    raise Terminated()


@click.group(cls=OptcGroup)
@click.version_option(package_name="optc")
@click.option("--verbose", is_flag=True, help="on an error, also print what the tools printed (torch graph dumps, MLIR diagnostics)")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """optc: a compression compiler for PyTorch models.

    \b
    Example:
      optc compile --plugins lowrank --opt lowrank.rank=16 --target cpu examples.models:mlp -o out/mlp.vmfb
    """
    ctx.obj = {"verbose": verbose}


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
@click.option("--batch", type=int, default=None, help="compile for this batch size: replaces the first dimension of every input [default: the example inputs']")
@click.option("--dynamic-batch", is_flag=True, help="one artifact that takes any batch size: the model at batch 1, 2, 4, … 32 (shared weights) and a main that runs a batch in chunks of those; --batch sets the batch it is verified at")
@click.option("--labels", default="", metavar="A,B,…", help="class names of the output, in order: written into the artifact's metadata for apps")
@model_options
def compile(model, plugins, opts, target, target_opts, output, tolerance, dump_ir, calib, eval_data, batch, dynamic_batch, labels, trust, input_shapes):
    """Compress MODEL with --plugins, compile it for --target, verify it, and write
    the artifact (.vmfb) and its report (.json).

    \b
    Example:
      optc compile --plugins lowrank --opt lowrank.energy=0.8 --target cpu model.pt2 -o model.vmfb
      optc compile --plugins bcr,admm --calib calib.npz --eval test.npz model.pt2 -o model.vmfb
    """
    from optc.api import parse_assignments
    from optc.driver import compile_model, load_and_lower, refuse_dynamic_batch_with, require_calibration, select
    from optc.load import parse_input_shape
    from optc.metadata import check_labels
    from optc.report import compile_report, write_artifact_pair

    return_large_frees()
    if tolerance is not None and not tolerance > 0:
        raise InputError(f"--tolerance {tolerance}: must be > 0")
    if batch is not None and batch <= 0:
        raise InputError(f"--batch {batch}: must be a positive integer")
    for spec in input_shapes:
        parse_input_shape(spec)  # before any heavy work
    class_labels = [label.strip() for label in labels.split(",")] if labels else []
    sel = select(_split_plugins(plugins), target, parse_assignments(opts, "--opt"), parse_assignments(target_opts, "--target-opt"))
    out = output or Path(Path(model.split(":")[-1]).stem + ".vmfb")
    if out.suffix != ".vmfb":
        raise InputError(f"-o {out}: the artifact name must end in .vmfb")
    sources = [("MODEL", Path(model)), ("--calib", calib), ("--eval", eval_data)]
    for written in (out, out.with_suffix(".json")):
        refuse_overwriting_input(written, "-o", sources)
        check_writable(written, "-o")
    require_calibration([m for m, _ in sel.methods], calib is not None)  # before any heavy work
    if dynamic_batch:
        refuse_dynamic_batch_with([m for m, _ in sel.methods])
    lowered = load_and_lower(model, trust, input_shapes, batch)
    if class_labels:
        check_labels(lowered[1], class_labels)  # before the methods' work
    compiled = compile_model(
        model, sel, trust=trust, input_shapes=input_shapes, tolerance=tolerance, dump_dir=dump_ir, calib=calib, eval_data=eval_data,
        loaded_and_lowered=lowered, labels=class_labels, dynamic_batch=dynamic_batch,
    )  # fmt: skip
    report = compile_report(compiled, str(out))
    write_artifact_pair(out, compiled.artifact.vmfb, out.with_suffix(".json"), report)
    _print_summary(report)


def return_large_frees() -> None:
    """Make glibc give every freed block of 4 MiB or more back to the system.
    By default its mmap threshold rises to the largest block freed (up to
    32 MiB), after which such arrays come from its heap and stay in the
    process when freed: calibration's row chunks and IREE's weight uploads
    then pile up (about 50 MB more peak on ResNet-18 with bcr,admm). Below
    4 MiB, blocks stay on the heap: mapping each afresh cost 10% more time."""
    import ctypes

    M_MMAP_THRESHOLD = -3
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def refuse_overwriting_input(output: Path, flag: str, inputs: Sequence[tuple[str, Path | None]]) -> None:
    """One line when ``output`` is one of the files this command reads."""
    for what, path in inputs:
        if path is not None and _same_file(output, path):
            raise InputError(f"{flag} {output}: that is the {what} file this command reads; choose another output path")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(path: Path, flag: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {folder} (permission denied or not a directory)")


@main.command()
@click.argument("model")
@selection_options
@click.option("--batch", type=int, default=None, help="batch size: replaces the first dimension of every input [default: the example inputs']")
@click.option("--threads", type=int, default=2, show_default=True, help="threads for PyTorch and IREE alike (each runner in its own process)")
@click.option("--min-rounds", type=int, default=20, show_default=True, help="at least this many interleaved timing rounds")
@click.option("--min-seconds", type=float, default=3.0, show_default=True, help="and at least this much timing work")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="write the bench report (JSON) here")
@click.option("--tolerance", type=float, default=None, help="max relative error of the artifacts vs their references [default: 1e-4]")
@calib_option
@click.option("--eval", "eval_data", type=click.Path(dir_okay=False, path_type=Path), metavar="DATA.npz",
              help="labelled samples (x, y): one timed run is a pass over them (a model whose latency depends on its input, e.g. drnet), and top-1 is reported")
@model_options
def bench(model, plugins, opts, target, target_opts, batch, threads, min_rounds, min_seconds, json_out, tolerance, calib, eval_data, trust, input_shapes):
    """Measure PyTorch eager, the dense IREE compile and the compressed IREE compile
    of MODEL side by side (each in its own process with its defaults, same
    threads, interleaved rounds), and print latency medians, speedups, FLOP
    reduction and realized efficiency. On a simulating target (--target sim)
    it also compares dense and compressed in simulated cycles, per layer.

    \b
    Example:
      optc bench --plugins lowrank --opt lowrank.rank=32 --batch 8 --threads 2 examples.models:mlp --json bench.json
    """
    import contextlib
    import dataclasses

    from optc.api import parse_assignments
    from optc.bench import (
        artifact_worker, eager_mismatch, eager_worker, eval_calls, format_table, simulated_comparison, speedups, time_workers,
    )
    from optc.calibration import load_samples
    from optc.lower import input_index_ranges
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
    lowered = load_and_lower(model, trust, input_shapes, batch)
    examples = lowered[1].example_inputs
    evaluation = load_samples(eval_data, examples, "--eval", need_labels=True, index_ranges=input_index_ranges(lowered[1])) if eval_data else None
    log("dense compile")
    dense = compile_model(model, dataclasses.replace(sel, methods=[]), tolerance=tolerance, loaded_and_lowered=lowered,
                          eval_data=None if sel.methods else eval_data)
    compressed = None
    if sel.methods:
        log("compressed compile")
        compressed = compile_model(model, sel, tolerance=tolerance, loaded_and_lowered=lowered, calib=calib, eval_data=eval_data)
    inputs = dense.program.example_inputs
    calls = eval_calls(evaluation, len(inputs[0])) if evaluation is not None else None
    artifacts = {"dense": dense, **({"compressed": compressed} if compressed is not None else {})}
    log(f"starting one worker process each for eager, {', '.join(artifacts)}")
    with contextlib.ExitStack() as stack:
        runners = {"eager": stack.enter_context(eager_worker(model, inputs, threads, trust=trust, input_shapes=input_shapes, calls=calls))}
        for name, c in artifacts.items():
            runners[name] = stack.enter_context(artifact_worker(target, c.selection.target_options, c.artifact.vmfb, inputs, threads, calls=calls))
        timing = {name: r.description for name, r in runners.items()}
        mismatch = eager_mismatch(runners["eager"], lowered[0].module, inputs)
        if mismatch:
            timing["eager"] += f"; {mismatch}"
            log(f"warning: the eager worker's {mismatch}")
        log(f"timing {', '.join(runners)} interleaved")
        measured = time_workers(runners, min_rounds=min_rounds, min_seconds=min_seconds, progress=log)
    latency = {k: t.as_dict() for k, t in measured.timings.items()}
    final = compressed or dense
    report = compile_report(final, None)
    report["kind"] = "bench"
    sp = speedups(latency)
    flop_reduction = report["totals"]["flop_reduction"]
    report["bench"] = {
        "batch": int(inputs[0].shape[0]) if inputs and inputs[0].ndim else None,
        "threads": threads,
        "timing": timing,
        "other_cpu_share": measured.other_cpu_share,
        "rounds": measured.rounds,
        "latency_ms": latency,
        "speedup": sp,
        "flop_reduction": flop_reduction,
        "realized_efficiency": sp["compressed_vs_dense"] / flop_reduction if compressed is not None and flop_reduction else None,
        "params": {"dense": dense.program.total_params(), **({"compressed": compressed.program.total_params()} if compressed else {})},
        "artifact_bytes": {"dense": len(dense.artifact.vmfb), **({"compressed": len(compressed.artifact.vmfb)} if compressed else {})},
    }
    if evaluation is not None:  # latency_ms is per pass over these samples
        report["bench"]["eval"] = {"path": str(eval_data), "samples": len(evaluation), "calls": len(calls),
                                   "per_sample_ms": {k: v["median"] / len(evaluation) for k, v in latency.items()}}
    simulated = simulated_comparison(dense.artifact.extra_report, compressed.artifact.extra_report if compressed else None)
    if simulated is not None:
        report["bench"]["simulation"] = simulated
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
    out = output or report_json.with_suffix(".html")
    refuse_overwriting_input(out, "-o", [("REPORT", report_json)])
    check_writable(out, "-o")
    data = load_report(report_json)
    write_bytes_atomic(out, render_html(data).encode())
    click.echo(f"wrote {out}")


# The issues' accuracy goals allow a method to lose at most 1 point of top-1.
ACCURACY_WARNING_POINTS = 1.0


def _print_summary(report: dict) -> None:
    from collections import Counter

    t = report["totals"]
    v = report["verification"]
    driver = report["target"]["options"].get("driver")
    on = f", runtime driver {driver}" if isinstance(driver, str) else ""
    click.echo(f"artifact   {report['artifact']['path']} ({report['artifact']['bytes']:,} bytes, target {report['target']['name']}{on})")
    if report["target"].get("flags_used", "").startswith("safe ("):
        click.echo(f"flags      {report['target']['flags_used']}")
    click.echo(f"report     {Path(report['artifact']['path']).with_suffix('.json')}")
    for m in report["methods"]:
        done = sum(c["status"] == "changed" for c in m["changes"])
        reasons = Counter((c["reason"] or "other").replace("_", " ") for c in m["changes"] if c["status"] != "changed")
        why = f" ({', '.join(f'{n} {r}' for r, n in reasons.items())})" if reasons else ""
        click.echo(f"method     {m['name']}: {done} layer(s) changed, {len(m['changes']) - done} skipped{why}")
    if not report["methods"]:
        click.echo(f"method     none: the dense model ({t['params_before']:,} params, {_megabytes(t['param_bytes_before'])} of weights)")
        if t["flop_reduction"] is None:
            click.echo("FLOPs(MAC) 0: the model has no contractions")
    else:
        click.echo(f"params     {t['params_before']:,} -> {t['params_after']:,}; weights {_megabytes(t['param_bytes_before'])} (dense) -> {_megabytes(t['param_bytes_after'])}")
        click.echo(f"FLOPs(MAC) {_macs_line(t)}")
    with_what = v.get("verified_with", "the artifact itself")
    checked, _, not_run = ("artifact", "", "") if with_what == "the artifact itself" else with_what.partition("; ")
    click.echo(
        f"verified   {checked} vs compressed reference: max rel err {v['compile_error']['max_rel']:.2e} "
        f"(tolerance {v['tolerance']:g}); compression vs original: {v['compression_error']['max_rel']:.2e}"
    )
    if not_run:
        click.echo(f"           {not_run}")
    if "simulation" in report:
        sim, arr = report["simulation"]["totals"], report["simulation"]["array"]
        click.echo(
            f"simulated  {sim['cycles']:,} cycles ({1e3 * sim['seconds']:.3f} ms at {arr['clock_mhz']:g} MHz) on "
            f"{arr['accelerators']} × {arr['rows']}×{arr['cols']} {arr['dataflow']} array(s), {len(report['simulation']['layers'])} contractions"
        )
    if "accuracy" in report:
        a = report["accuracy"]
        click.echo(
            f"top-1      original {100 * a['original']:.2f}%, compressed reference {100 * a['compressed_reference']:.2f}%, "
            f"artifact {100 * a['artifact']:.2f}% ({a['samples']} samples of {a['path']})"
        )
        lost = 100 * (a["original"] - a["artifact"])
        if lost > ACCURACY_WARNING_POINTS:
            hint = "milder options keep more" if "calibration" in report else "milder options, or --calib for a data-driven method, keep more"
            click.echo(f"warning    the artifact's top-1 is {lost:.2f} points below the original's: {hint}")


def _megabytes(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "inputs", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path), help=".npy per input (repeat, in order), or one .npz: a sample file (x or x0, x1, …; y is ignored) or arg0, arg1, …")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="write outputs to this .npy (one output) or .npz")
@click.option("--target", default=None, help="target the artifact was built for [default: from its metadata, else its .json report, else cpu]")
def run(artifact, inputs, output, target):
    """Run a compiled ARTIFACT on inputs from .npy/.npz files. Any number of samples
    runs through a batch-N artifact in chunks of N (the last one padded, its padding
    dropped from the outputs).

    \b
    Example:
      optc run model.vmfb --input x.npy --output y.npy
      optc run model-b8.vmfb --input digits_test.npz --output logits.npy
    """
    import numpy as np

    from optc.calibration import Samples
    from optc.lower import check_index_ranges
    from optc.metadata import optc_info, read, recorded_target_options
    from optc.registry import load_registry
    from optc.report import artifact_sha256, load_report, write_bytes_atomic

    if not artifact.exists():
        raise InputError(f"artifact not found: {artifact}")
    try:
        described = optc_info(read(artifact))
    except InputError as e:
        raise InputError(f"{artifact}: {e}") from None
    sidecar = artifact.with_suffix(".json")
    if output is not None:
        refuse_overwriting_input(output, "--output", [("artifact", artifact), ("report", sidecar), *(("--input", p) for p in inputs)])
        check_writable(output, "--output")
    vmfb = artifact.read_bytes()
    report = load_report(sidecar) if sidecar.exists() else None
    if report is not None:
        recorded = report["artifact"].get("sha256")
        if recorded is not None and recorded != artifact_sha256(vmfb):
            raise InputError(
                f"{artifact} does not match its report {sidecar} (sha256 differs: they come from different compiles); "
                "recompile, or remove the stale .json"
            )
        if described is None:  # an artifact from before optc wrote its metadata into it
            if not isinstance(report["target"].get("name"), str) or not isinstance(report["target"].get("options"), dict):
                raise InputError(f"{sidecar} is not a complete optc report: field 'target' needs a name and options")
            if not all(isinstance(e, dict) and isinstance(e.get("shape"), list) for e in report["inputs"]):
                raise InputError(f"{sidecar} is not a complete optc report: field 'inputs' needs a shape per input")
            described = report
    expected = None
    target_options = {}
    if described is not None:
        target = target or described["target"]["name"]
        target_options = recorded_target_options(described)
        expected = [{"shape": list(s["shape"]), "dtype": s["dtype"]} for s in described["inputs"]]
    # Integer inputs that index a table: their valid range is in the artifact's own
    # metadata (and in the hash-checked report, for artifacts from before it was).
    ranges = {}
    for source in (described, report):
        if source and not ranges:
            ranges = {i: (int(e["index_range"][0]), int(e["index_range"][1])) for i, e in enumerate(source["inputs"]) if _is_range(e.get("index_range"))}
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
    arrays = _read_inputs(inputs, len(expected) if expected is not None else None)
    batch = None  # run in chunks of this many samples
    if expected is not None:
        got = [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in arrays]
        if got != expected:
            if not _same_samples(got, expected):
                raise InputError(f"inputs {_fmt(got)} do not match the artifact's inputs {_fmt(expected)}")
            batch = expected[0]["shape"][0]
    check_index_ranges(arrays, ranges, "--input")
    try:
        session = tgt.open(vmfb, options)
    except InputError as e:
        raise InputError(f"{artifact}: {e}") from None
    if batch is None:
        outs = session(*arrays)
    else:
        chunks = []
        for chunk, real in Samples(inputs[0], arrays, None).batches(batch):
            results = session(*chunk)
            if any(o.ndim == 0 or o.shape[0] != batch for o in results):
                raise InputError(f"{artifact}: its outputs are not batch first; pass inputs of exactly {_fmt(expected)}")
            chunks.append([o[:real] for o in results])
        outs = [np.concatenate(parts) for parts in zip(*chunks)]
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


def _is_range(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _same_samples(got: list[dict], expected: list[dict]) -> bool:
    """Inputs that are samples for a batch artifact: each input as the artifact's but
    for the batch (first) dimension, all with the same number of samples."""
    return (
        len(got) == len(expected)
        and all(g["dtype"] == e["dtype"] and len(g["shape"]) == len(e["shape"]) >= 1 and g["shape"][1:] == e["shape"][1:] for g, e in zip(got, expected))
        and len({g["shape"][0] for g in got}) == 1
        and got[0]["shape"][0] > 0
    )


def _fmt(sig: list[dict]) -> str:
    return ", ".join(f"{'x'.join(map(str, s['shape']))}:{s['dtype']}" for s in sig)


def _read_inputs(paths: Sequence[Path], count: int | None) -> list:
    """One .npy per input, in order, or one .npz whose arrays carry the
    documented names (x / x0, x1, … / arg0, arg1, …)."""
    from optc.calibration import input_arrays, read_arrays

    loaded = [(p, read_arrays(p, f"--input {p}")) for p in paths]
    archives = [p for p, data in loaded if isinstance(data, dict)]
    if archives and len(paths) > 1:
        raise InputError(f"--input {archives[0]}: give one .npz holding every input, or one .npy per input, not both")
    if archives:
        return input_arrays(loaded[0][1], count, f"--input {archives[0]}")
    if count is not None and len(paths) != count:
        raise InputError(f"--input: the artifact takes {count} input(s), got {len(paths)} file(s)")
    return [data for _, data in loaded]


@main.command()
@click.argument("model")
@click.option("--mlir", "show_mlir", is_flag=True, help="also print the linalg IR (weights elided)")
@model_options
def inspect(model, show_mlir, trust, input_shapes):
    """Print MODEL's weighted layers: op kind, weight shape, ops, params, FLOPs (MACs);
    or, for a compiled artifact (.vmfb), the metadata it carries.

    \b
    Example:
      optc inspect examples.models:cnn
      optc inspect out/digits_cnn.vmfb
    """
    from optc.driver import load_and_lower

    if model.endswith(".vmfb"):
        _inspect_artifact(Path(model))
        return

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


def _inspect_artifact(path: Path) -> None:
    """Print what an artifact says about itself (its IREE reflection attributes)."""
    from optc.metadata import optc_info, read

    if not path.is_file():
        raise InputError(f"artifact not found: {path}")
    try:
        reflection = read(path)
        info = optc_info(reflection)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    click.echo(f"artifact   {path} ({path.stat().st_size:,} bytes)")
    click.echo(f"function   {reflection.get('iree.abi.declaration', 'main')}")
    if info is None:
        click.echo("optc       no optc metadata (not compiled by optc)")
        return
    click.echo(f"optc       {info['optc_version']} ({info['schema']})")
    click.echo(f"model      {info['model']}")
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            dims = "x".join("?" if d is None else str(d) for d in s["shape"])
            click.echo(f"{kind[:-1]:<10} {s['name']}: {dims} {s['dtype']}")
    if "labels" in info:
        click.echo(f"labels     {', '.join(info['labels'])}")
    click.echo(f"target     {info['target']['name']} {_fmt_options(info['target']['options'])}")
    for m in info["methods"]:
        click.echo(f"method     {m['name']} {_fmt_options(m['options'])}")
    t = info["totals"]
    click.echo(f"params     {t['params_before']:,} -> {t['params_after']:,} ({t['param_bytes_before']:,} -> {t['param_bytes_after']:,} bytes)")
    click.echo(f"FLOPs(MAC) {_macs_line(t)}")


def _macs_line(t: dict) -> str:
    """MACs before -> after: a range for a program that picks a variant per input at run time."""
    if "dynamic" in t:
        d = t["dynamic"]
        return (f"{t['macs_before']:,} -> {d['macs_min']:,} .. {d['macs_max']:,} per run, chosen per input at run time "
                f"({len(d['callee_macs'])} variants; the average on --eval is in the report's accuracy section)")
    if t["flop_reduction"] is None:
        return f"{t['macs_before']:,} -> {t['macs_after']:,} (no contractions left)"
    fewer = f"{t['flop_reduction']:.2f}x fewer" if t["macs_after"] != t["macs_before"] else "unchanged"
    return f"{t['macs_before']:,} -> {t['macs_after']:,} ({fewer})"


def _fmt_options(options: dict) -> str:
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items())


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
