"""The compile pipeline: load -> lower -> methods (in the user's order) ->
compile(target) -> run -> verify. The CLI and bench both drive it from here."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from optc.api import Artifact, LayerMethod, Method, MethodContext, MethodResult, Target, build_options
from optc.errors import CompileError, InputError, LoadError, MethodError, OptcError, OptionError, TargetUnavailableError, UnknownNameError
from optc.registry import load_registry


@dataclass
class Selection:
    """The methods and target the user asked for, with validated options."""

    methods: list[tuple[Method, Any]]
    target: Target
    target_options: Any


def select(
    method_names: Sequence[str],
    target_name: str,
    method_opts: dict[str, dict[str, str]],
    target_opts: dict[str, dict[str, str]],
) -> Selection:
    """Resolve names and options before any heavy work, so bad input fails fast."""
    reg = load_registry()
    methods = [reg.method(n) for n in method_names]
    for owner in method_opts:
        if owner not in method_names:
            if owner in reg.methods:
                raise UnknownNameError(f"--opt {owner}.*: method {owner!r} is not in --plugins ({', '.join(method_names) or 'none'})")
            raise UnknownNameError(f"--opt {owner}.*: unknown method {owner!r}; installed methods: {', '.join(sorted(reg.methods))}")
    target = reg.target(target_name)
    for owner in target_opts:
        if owner != target_name:
            raise UnknownNameError(f"--target-opt {owner}.*: the selected target is {target_name!r}")
    ok, reason = target.available()
    if not ok:
        raise TargetUnavailableError(f"target {target_name!r} is not available: {reason}")
    return Selection(
        methods=[(m, build_options(m.name, m.Options, method_opts.get(m.name, {}))) for m in methods],
        target=target,
        target_options=build_options(target_name, target.Options, target_opts.get(target_name, {})),
    )


def apply_methods(
    program: Any,
    methods: Sequence[tuple[Method, Any]],
    ctx: MethodContext,
    progress: Callable[[str], None] = lambda s: None,
) -> list[MethodResult]:
    """Apply each method in order; merge the reference weights they report."""
    results = []
    for method, options in methods:
        require_calibration([method], ctx.calibration is not None)
        progress(f"applying {method.name}")
        before = program.to_text() if ctx.dump_dir is not None else None
        try:
            result = method.apply(program, options, ctx)
            program.verify()
        except OptcError:
            raise
        except Exception as e:
            where = _dump(before, ctx.dump_dir, method.name)
            raise MethodError(f"method {method.name!r} failed: {type(e).__name__}: {e}{where}") from e
        results.append(result)
    return results


def require_calibration(methods: Sequence[Method], have_calibration: bool) -> None:
    """One clear error when a method that needs --calib has none."""
    needing = [m.name for m in methods if m.needs_calibration]
    if needing and not have_calibration:
        raise MethodError(f"method {needing[0]!r} needs calibration data: pass --calib data.npz (arrays x: inputs, batch first)")


def _dump(text: str | None, dump_dir: Path | None, name: str) -> str:
    if text is None or dump_dir is None:
        return " (rerun with --dump-ir DIR for a reproducer)"
    dump_dir.mkdir(parents=True, exist_ok=True)
    path = dump_dir / f"before-{name}.mlir"
    path.write_text(text)
    return f" (IR before it: {path})"


def merged_reference_weights(results: Sequence[MethodResult]) -> dict[str, np.ndarray]:
    """Later methods refine earlier ones: the last reference weight of a parameter wins."""
    merged: dict[str, np.ndarray] = {}
    for r in results:
        merged.update(r.reference_weights)
    return merged


def options_dict(options: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}


_quiet = False
_live_line = False  # a progress line is showing on the terminal


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no log lines and no progress."""
    global _quiet
    _quiet = quiet


def log(msg: str) -> None:
    if not _quiet:
        _end_progress()
        print(f"optc: {msg}", file=sys.stderr, flush=True)


def progress(msg: str) -> None:
    """One step of a long stage, shown in place on a terminal; nothing when stderr
    is not a terminal (logs, CI) or with ``--quiet``."""
    global _live_line
    if _quiet or not sys.stderr.isatty():
        return
    sys.stderr.write(f"\r\033[Koptc: {msg}")
    sys.stderr.flush()
    _live_line = True


def _end_progress() -> None:
    global _live_line
    if _live_line:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        _live_line = False


def plain_options(target: str, options: Any) -> str:
    """``vulkan.profile=default`` — options as a user would type them."""
    return ", ".join(f"{target}.{k}={v}" for k, v in options_dict(options).items()) or f"{target} defaults"


@dataclass
class Compiled:
    """Everything one compile produced: the programs before/after, the method
    results, the artifact, and its verification."""

    model_spec: str
    loaded: Any
    original: Any
    program: Any
    selection: Selection
    results: list[MethodResult]
    artifact: Artifact
    verification: Any
    verified_with: str
    calibration: dict[str, Any] | None = None  # {"path", "samples"}
    accuracy: dict[str, Any] | None = None  # top-1 on --eval: original, compressed reference, artifact
    passes: list[MethodResult] = dataclasses.field(default_factory=list)  # built-in passes after the methods
    index_ranges: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # input -> [low, high) of an index input
    chunks_max_rel: float | None = None  # --dynamic-batch: the chunk path against the exact-size path


def compile_model(
    model_spec: str,
    sel: Selection,
    *,
    trust: bool = False,
    input_shapes: Sequence[str] = (),
    tolerance: float | None = None,
    dump_dir: Path | None = None,
    loaded_and_lowered: tuple[Any, Any] | None = None,
    calib: Path | None = None,
    eval_data: Path | None = None,
    labels: Sequence[str] = (),
    time_batching: bool = True,
    dynamic_batch: bool = False,
) -> Compiled:
    """load -> lower -> methods -> compile -> run -> verify (-> evaluate on
    ``eval_data``). Raises VerifyError when the artifact does not reproduce the
    compressed reference."""
    from optc.calibration import Calibration, load_samples, top1
    from optc.errors import VerifyError
    from optc.lower import check_index_ranges, input_index_ranges
    from optc.metadata import annotate, describe
    from optc.time_batching import time_batch
    from optc.verify import DEFAULT_TOLERANCE, check as check_outputs, expected_outputs

    require_calibration([m for m, _ in sel.methods], calib is not None)  # before any heavy work
    if dynamic_batch:
        refuse_dynamic_batch_with([m for m, _ in sel.methods])
    loaded, original = loaded_and_lowered or load_and_lower(model_spec, trust, input_shapes)
    examples = original.example_inputs
    ranges = input_index_ranges(original)  # integer inputs that index tables: checked before every run
    check_index_ranges(examples, ranges, "the example inputs")
    samples = load_samples(calib, examples, "--calib", index_ranges=ranges) if calib is not None else None
    evaluation = load_samples(eval_data, examples, "--eval", need_labels=True, index_ranges=ranges) if eval_data is not None else None
    if dynamic_batch:
        from optc.dynamic_batch import lower_dynamic_batch, variant_sizes

        log(f"lowering at batch sizes {', '.join(map(str, variant_sizes(original)))} for --dynamic-batch")
        program = lower_dynamic_batch(loaded, original)
    else:
        program = original.clone()
    ctx = MethodContext(calibration=Calibration(samples, original, _host_runner) if samples else None, dump_dir=dump_dir, progress=progress, model=loaded)
    try:
        results = apply_methods(program, sel.methods, ctx, progress=log)
    finally:
        if ctx.calibration is not None:
            ctx.calibration.close()  # its stored results and probe module, before the big compile
    if time_batching:  # after the methods: see optc.time_batching; every variant, the described one reported
        from optc.report import rows_variant

        batched = {v.func_name: time_batch(v) for v in program.variants()}
        passes = [batched[rows_variant(program).func_name]]
    else:
        passes = []
    reference = merged_reference_weights(results)
    dynamic = [r.reference_model for r in results if r.reference_model is not None]
    reference_module = dynamic[-1](reference) if dynamic else None
    expected = expected_outputs(loaded.module, reference, program.example_inputs, reference_module)
    batch = len(examples[0])
    eager_accuracy = _eager_accuracy(loaded.module, reference, evaluation, batch, reference_module) if evaluation is not None else None
    for r in results:  # their last use: a low-rank layer's dense reference is as big as its original weight
        r.reference_weights.clear()
    del reference, reference_module
    sel = dataclasses.replace(sel, target_options=sel.target.resolve_options(program, sel.target_options))
    annotate(program, describe(model_spec, loaded, original, program, sel, labels, ranges))  # the artifact describes itself
    runnable, why = sel.target.runs_here(sel.target_options)
    for options in [sel.target_options] + ([] if runnable else [sel.target.portable_options(sel.target_options)]):
        ok, missing = sel.target.supports(program, options)
        if not ok:
            raise CompileError(f"cannot compile this program for {sel.target.name} ({plain_options(sel.target.name, options)}): {missing}")
    log(f"compiling for {sel.target.name}")
    artifact = sel.target.compile(program, sel.target_options)
    if runnable:
        checked, checked_options, verified_with = artifact, sel.target_options, "the artifact itself"
    else:
        checked_options = sel.target.portable_options(sel.target_options)
        built, portable = plain_options(sel.target.name, sel.target_options), plain_options(sel.target.name, checked_options)
        log(f"the {built} artifact cannot run here ({why}); checking the numbers with a {portable} build of the same program instead")
        checked = sel.target.compile(program, checked_options)
        verified_with = f"a portable build ({portable}) of the same program; the {built} artifact itself was not run here: {why}"
    log("running it and PyTorch eager on the example inputs")
    session = sel.target.open(checked.vmfb, checked_options)
    outputs = session(*program.example_inputs)
    check = check_outputs(outputs, expected, tolerance if tolerance is not None else DEFAULT_TOLERANCE)
    if not check.passed:
        raise VerifyError(
            f"the artifact differs from the compressed reference: max relative error "
            f"{check.compile_error.max_rel:.3g} > tolerance {check.tolerance:g} (raise it with --tolerance)"
        )
    chunks_max_rel = None
    if dynamic_batch:
        from optc.dynamic_batch import check_chunks

        chunks_max_rel = check_chunks(session, program.example_inputs)
        if not chunks_max_rel <= check.tolerance:
            raise VerifyError(f"--dynamic-batch: a batch run in chunks differs from its samples run alone (max relative error "
                              f"{chunks_max_rel:.3g} > tolerance {check.tolerance:g}): is the inputs' first dimension really the batch, "
                              "with samples independent (not a sequence-first RNN's time steps)?")
    accuracy = None
    if evaluation is not None:
        accuracy = {**eager_accuracy, "artifact": top1(_counted("artifact", lambda xs: session(*xs)[0], len(evaluation), batch), evaluation, batch)}
    for r in results:
        if accuracy is not None and r.evaluate is not None:
            accuracy[r.method] = r.evaluate(evaluation)
    calibration = {"path": str(calib), "samples": len(samples)} if samples is not None else None
    return Compiled(model_spec, loaded, original, program, sel, results, artifact, check, verified_with, calibration, accuracy, passes, ranges, chunks_max_rel)


def refuse_dynamic_batch_with(methods: Sequence[Method]) -> None:
    """--dynamic-batch compiles per-layer methods into every batch variant; a
    whole-program method (drnet) builds a module of its own."""
    whole = [m.name for m in methods if not isinstance(m, LayerMethod)]
    if whole:
        raise OptionError(f"--dynamic-batch cannot be combined with {', '.join(whole)}: it rewrites the whole program "
                          "(only per-layer methods are applied to every batch variant)")


def _host_runner(program: Any) -> Callable[..., list[np.ndarray]]:
    """Compile ``program`` for this CPU and open it (calibration probes)."""
    cpu = load_registry().target("cpu")
    options = build_options("cpu", cpu.Options, {})
    return cpu.open(cpu.compile(program, options).vmfb, options)


def _eager_accuracy(module: Any, reference: dict[str, np.ndarray], samples: Any, batch: int, reference_module: Any = None) -> dict[str, Any]:
    """Top-1 of the original model and the compressed reference (PyTorch eager)
    on the labelled ``samples`` (the artifact's is measured once it is built)."""
    from optc.calibration import top1
    from optc.verify import eager_outputs, with_weights

    log(f"evaluating top-1 on {len(samples)} samples")
    compressed = reference_module if reference_module is not None else with_weights(module, reference)
    return {
        "path": str(samples.path),
        "samples": len(samples),
        "original": top1(_counted("original", lambda xs: eager_outputs(module, xs)[0], len(samples), batch), samples, batch),
        "compressed_reference": top1(_counted("compressed reference", lambda xs: eager_outputs(compressed, xs)[0], len(samples), batch), samples, batch),
    }


def _counted(what: str, predict: Callable[[list[np.ndarray]], np.ndarray], samples: int, batch: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``predict``, showing its progress over the batches of ``samples``."""
    batches = -(-samples // batch)
    done = [0]

    def run(xs: list[np.ndarray]) -> np.ndarray:
        done[0] += 1
        progress(f"evaluating top-1 of the {what}: batch {done[0]}/{batches}")
        return predict(xs)

    return run


def load_and_lower(model_spec: str, trust: bool, input_shapes: Sequence[str], batch: int | None = None) -> tuple[Any, Any]:
    """The loaded model and its lowered program (at ``batch`` when given)."""
    from optc.load import load_model
    from optc.lower import lower

    log(f"loading {model_spec}")
    loaded = load_model(model_spec, trust=trust, input_shapes=input_shapes)
    if batch is not None:
        import torch

        from optc.bench import rebatch

        inputs = rebatch([t.numpy() for t in loaded.example_inputs], batch)
        loaded = dataclasses.replace(loaded, example_inputs=tuple(torch.from_numpy(x) for x in inputs), exported=None)
        try:
            loaded.export()
        except LoadError as e:
            raise InputError(f"--batch {batch}: {e} (does the model fix its batch size?)") from None
    log("lowering to linalg with torch-mlir")
    return loaded, lower(loaded)
