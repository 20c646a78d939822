"""``--target sim``: the cpu artifact for numbers, a simulated accelerator for cycles.

Numerics: the program is compiled exactly as for ``--target cpu`` (the ``.vmfb``
is produced, verified and run on ``local-task``). Cycles: every contraction of
the compressed program is handed to SCALE-Sim v3 (``scalesim`` 3.0.0, a
cycle-level systolic-array simulator) as GEMMs with its real shapes, read
from the IR:

    linalg.matmul          M×K · K×N                       one GEMM (M, N, K)
    linalg.batch_matmul    B × (M×K · K×N)                 B independent GEMMs (bcr's
                                                           blocks, partition's partitions)
    conv (NCHW/NHWC)       im2col: M = N·OH·OW, N = F, K = C·KH·KW
    grouped conv           G GEMMs of F/G filters over C/G·KH·KW
    depthwise conv         C GEMMs of one filter over KH·KW

A layer whose weights carry an N:M structure (``program.structures``, admm's
``prune=nm``) is simulated with that ratio and SCALE-Sim's sparsity support
(ellpack_block): the array skips the pruned weights. Unstructured masks are
simulated dense (the array has no support for them). bcr and partition change
the shapes themselves, so their compact matmuls are simulated as they are.
On the CPU all masks are stored dense: only the simulation counts them.

SCALE-Sim runs in-process in a temporary folder (config, GEMM topology and an
empty layout file written there; its COMPUTE_REPORT/DETAILED_ACCESS_REPORT CSVs
read back), in its bandwidth-estimating mode, with 1-byte words. Per op the
report has cycles (compute incl. stalls), utilization, SRAM reads/writes and
DRAM reads/writes in words; SCALE-Sim 3.0.0 reports no energy, so none is given.

Simulation cost: SCALE-Sim walks every demand cycle in Python (~1 ms a cycle
here; a 12544×64×147 GEMM on 32×32 took 136 s). A GEMM needing more than
``sample_cycles`` cycles is simulated on a slice (whole array folds, the outer
fold dimension first; when one fold alone is longer, fewer streamed operands)
and its counts scaled by the ratio of the two GEMMs' cycles. Cycles stay exact
(in this mode SCALE-Sim's cycles are :func:`systolic_cycles`, checked in the
tests); traffic is approximate for such layers, which the report marks
(``sampled``). Identical GEMMs are simulated once.

Several accelerators (``accelerators`` = A, identical arrays) — a small model
on top of SCALE-Sim's one array:

- an op of B independent GEMMs (a batch_matmul) runs them on the A arrays in
  ⌈B/A⌉ waves: ``cycles = ⌈B/A⌉ · cycles(GEMM)``; nothing is exchanged;
- a single GEMM is split along its reduction dim K into A parts of ⌈K/A⌉; each
  array computes M×N partial sums, and the A−1 others send theirs to one array
  over a shared link: ``bytes = (A−1)·M·N·word``, ``seconds = latency + bytes /
  bandwidth``, ``cycles = cycles(M, N, ⌈K/A⌉) + ⌈seconds · clock⌉``.
Moving activations between layers is not counted (for either case).
Ops run one after another: the total is the sum of the ops' cycles.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

from optc.api import Artifact, Session, Target, option
from optc.hookspecs import hookimpl
from optc.program import CONTRACTIONS, Program, op_macs, shape_of

WORD_BYTES = 1  # SCALE-Sim's word size

# (rows, cols, ifmap KB, filter KB, ofmap KB, dataflow, clock MHz)
PRESETS: dict[str, tuple[int, int, int, int, int, str, float]] = {
    "tpu-v1": (256, 256, 6144, 6144, 2048, "ws", 700.0),  # Jouppi et al. 2017; SCALE-Sim's google.cfg sizes
    "eyeriss": (12, 14, 108, 108, 108, "ws", 200.0),  # Chen et al. 2016: 12×14 PEs, 108 KB global buffer
    "edge32": (32, 32, 64, 64, 64, "ws", 500.0),  # a small edge array
}


@dataclass
class SimOptions:
    preset: Literal["edge32", "eyeriss", "tpu-v1"] = option("edge32", "array preset: tpu-v1 (256×256 ws, 700 MHz), eyeriss (12×14, 200 MHz), edge32 (32×32 ws, 500 MHz); the options below override it")
    rows: Optional[int] = option(None, "systolic array rows (default: the preset's)")
    cols: Optional[int] = option(None, "systolic array columns (default: the preset's)")
    ifmap_kb: Optional[int] = option(None, "input SRAM in KB (default: the preset's)")
    filter_kb: Optional[int] = option(None, "weight SRAM in KB (default: the preset's)")
    ofmap_kb: Optional[int] = option(None, "output SRAM in KB (default: the preset's)")
    dataflow: Optional[Literal["os", "ws", "is"]] = option(None, "output/weight/input stationary (default: the preset's)")
    clock_mhz: Optional[float] = option(None, "clock in MHz, for times (default: the preset's)")
    accelerators: int = option(1, "identical arrays working in parallel")
    interconnect_gbps: float = option(16.0, "bandwidth of the link between accelerators, GB/s")
    interconnect_latency_us: float = option(1.0, "latency of one transfer between accelerators, µs")
    sparsity: bool = option(True, "the array skips the pruned weights of N:M-sparse layers (SCALE-Sim sparsity support)")
    sample_cycles: int = option(2000, "simulate a GEMM longer than this many cycles on a slice of whole folds and scale (0: simulate everything)")

    def validate(self) -> None:
        for key in ("rows", "cols", "ifmap_kb", "filter_kb", "ofmap_kb", "clock_mhz"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key}={value}: must be > 0")
        if self.accelerators < 1:
            raise ValueError(f"accelerators={self.accelerators}: must be >= 1")
        if not self.interconnect_gbps > 0 or self.interconnect_latency_us < 0:
            raise ValueError("interconnect_gbps must be > 0 and interconnect_latency_us >= 0")
        if self.sample_cycles < 0:
            raise ValueError(f"sample_cycles={self.sample_cycles}: must be >= 0 (0: no sampling)")

    def array(self) -> "Array":
        rows, cols, ifmap, filt, ofmap, df, clock = PRESETS[self.preset]
        pick = lambda v, d: d if v is None else v  # noqa: E731
        return Array(pick(self.rows, rows), pick(self.cols, cols), pick(self.ifmap_kb, ifmap), pick(self.filter_kb, filt),
                     pick(self.ofmap_kb, ofmap), pick(self.dataflow, df), pick(self.clock_mhz, clock), self.sparsity)


@dataclass(frozen=True)
class Array:
    """One simulated accelerator."""

    rows: int
    cols: int
    ifmap_kb: int
    filter_kb: int
    ofmap_kb: int
    dataflow: str
    clock_mhz: float
    sparsity: bool


@dataclass(frozen=True)
class Gemm:
    """(M×K) · (K×N) with n of every m weights along K kept (1:1 = dense)."""

    m: int
    n: int
    k: int
    nm: tuple[int, int] = (1, 1)

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k


@dataclass
class OpGemms:
    """One contraction of the program as ``batch`` identical independent GEMMs."""

    op: str
    layer: str | None
    batch: int
    gemm: Gemm


def op_gemms(op: Any) -> tuple[int, Gemm]:
    """(batch, GEMM) of one contraction op, from its operand and result shapes."""
    s = [shape_of(v) for v in op.operands]
    out = shape_of(op.results[0])
    name = op.name
    if name == "linalg.matmul":
        return 1, Gemm(s[0][0], s[1][1], s[0][1])
    if name == "linalg.batch_matmul":
        return s[0][0], Gemm(s[0][1], s[1][2], s[0][2])
    if name == "linalg.conv_2d_nchw_fchw":
        return 1, Gemm(out[0] * out[2] * out[3], s[1][0], s[1][1] * s[1][2] * s[1][3])
    if name == "linalg.conv_2d_nhwc_hwcf":
        return 1, Gemm(out[0] * out[1] * out[2], s[1][3], s[1][0] * s[1][1] * s[1][2])
    if name == "linalg.conv_2d_ngchw_gfchw":
        return s[1][0], Gemm(out[0] * out[3] * out[4], s[1][1], s[1][2] * s[1][3] * s[1][4])
    if name == "linalg.depthwise_conv_2d_nchw_chw":
        return s[1][0], Gemm(out[0] * out[2] * out[3], 1, s[1][1] * s[1][2])
    if name == "linalg.depthwise_conv_2d_nhwc_hwc":
        return s[1][2], Gemm(out[0] * out[1] * out[2], 1, s[1][0] * s[1][1])
    raise ValueError(f"no GEMM form for {name}")


def program_gemms(program: Program) -> list[OpGemms]:
    """Every contraction of ``program`` in order, with its layer and the N:M
    ratio its layer's structure imposes (if any)."""
    from optc.structures import NM

    weighted = program.weighted_ops()
    found = []
    for op in program.ops():
        if op.name not in CONTRACTIONS:
            continue
        layer = next((w.layer for w in weighted if w.op == op), None)
        batch, gemm = op_gemms(op)
        assert batch * gemm.macs == op_macs(op), f"{op.name}: GEMM form {batch}×{gemm} does not match its MACs"
        s = program.structures.get(layer) if layer is not None else None
        if s is not None and isinstance(s.structure, NM) and gemm.k % s.structure.m == 0:
            gemm = replace(gemm, nm=(s.structure.n, s.structure.m))
        found.append(OpGemms(op.name, layer, batch, gemm))
    return found


# --------------------------------------------------------------------------- the array model


def fold_dims(g: Gemm, df: str) -> tuple[int, int, int]:
    """SCALE-Sim's (Sr, Sc, T): the GEMM dims mapped on array rows, columns and time.
    N:M sparsity shrinks K to K·n/m (the array skips the pruned weights)."""
    k = math.ceil(g.k * g.nm[0] / g.nm[1])
    return {"os": (g.m, g.n, k), "ws": (k, g.n, g.m), "is": (k, g.m, g.n)}[df]


def systolic_cycles(g: Gemm, rows: int, cols: int, df: str) -> int:
    """Cycles of one GEMM on a rows×cols array, with no memory stalls: every
    fold streams T operands plus the pipeline fill and drain (ws/is also load the
    stationary operand: R more cycles), ⌈Sr/R⌉·⌈Sc/C⌉ folds; SCALE-Sim counts
    from cycle 0, hence the −1."""
    sr, sc, t = fold_dims(g, df)
    per_fold = t + rows + cols - 2 + (rows if df in ("ws", "is") else 0)
    return math.ceil(sr / rows) * math.ceil(sc / cols) * per_fold - 1


def interconnect_cycles(partial_sum_words: int, senders: int, gbps: float, latency_us: float, clock_mhz: float) -> int:
    """Cycles to send ``senders`` × ``partial_sum_words`` words over one shared link."""
    if senders == 0:
        return 0
    seconds = latency_us * 1e-6 + senders * partial_sum_words * WORD_BYTES / (gbps * 1e9)
    return math.ceil(seconds * clock_mhz * 1e6)


_COUNTS = ("cycles", "cycles_with_prefetch", "sram_ifmap_reads", "sram_filter_reads", "sram_ofmap_writes",
           "dram_ifmap_reads", "dram_filter_reads", "dram_ofmap_writes")


def _slice(g: Gemm, array: Array, budget: int) -> tuple[Gemm, float]:
    """A GEMM of whole folds of ``g`` needing about ``budget`` cycles at most (the
    outer fold dim, columns, cut first, then rows; when one fold alone is longer,
    its streamed dim T too), and the factor that scales its counts back to ``g``:
    the ratio of their cycles, exact for cycles (:func:`systolic_cycles`)."""
    rows, cols, df = array.rows, array.cols, array.dataflow
    full = systolic_cycles(g, rows, cols, df) + 1
    if budget == 0 or full <= budget:
        return g, 1.0
    sr, sc, t = fold_dims(g, df)
    fr, fc = math.ceil(sr / rows), math.ceil(sc / cols)
    keep = max(1, budget * fr * fc // full)  # folds to simulate
    kc = min(fc, keep)
    kr = min(fr, max(1, keep // kc))
    cut_r, cut_c = min(sr, kr * rows), min(sc, kc * cols)
    cut_t = min(t, max(1, budget - (full // (fr * fc) - t)))  # a fold is T + fill/drain cycles
    n, m = g.nm
    as_k = lambda v: min(g.k, m * math.ceil(v / n))  # a condensed K back to whole N:M groups  # noqa: E731
    sliced = {
        "os": lambda: replace(g, m=cut_r, n=cut_c, k=as_k(cut_t)),
        "ws": lambda: replace(g, k=as_k(cut_r), n=cut_c, m=cut_t),
        "is": lambda: replace(g, k=as_k(cut_r), m=cut_c, n=cut_t),
    }[df]()
    return sliced, full / (systolic_cycles(sliced, rows, cols, df) + 1)


class Simulator:
    """SCALE-Sim on one array, one run per batch of distinct GEMMs, results cached."""

    def __init__(self, array: Array, sample_cycles: int):
        self.array = array
        self.sample_cycles = sample_cycles
        self._cache: dict[Gemm, dict[str, Any]] = {}

    def run(self, gemms: list[Gemm]) -> dict[Gemm, dict[str, Any]]:
        todo = [g for g in dict.fromkeys(gemms) if g not in self._cache]
        plans = [(g, *_slice(g, self.array, self.sample_cycles)) for g in todo]
        for (g, sliced, ratio), row in zip(plans, _scalesim([s for _, s, _ in plans], self.array)):
            counts = {key: round(row[key] * ratio) for key in _COUNTS}
            counts["cycles"] = round((row["cycles"] + 1) * ratio) - 1  # SCALE-Sim counts from cycle 0: scale the length
            counts["utilization"] = row["utilization"]
            counts["mapping_efficiency"] = row["mapping_efficiency"]
            if ratio != 1.0:
                counts["sampled"] = {"simulated_gemm": [sliced.m, sliced.n, sliced.k], "scale": ratio}
            self._cache[g] = counts
        return {g: self._cache[g] for g in gemms}


def _patch_scalesim_numpy() -> None:
    """scalesim 3.0.0 calls ``int(max(list of 1-element arrays))``, which NumPy ≥ 2.4
    refuses (SCALE-Sim issue #160, fix in PR #162): give that module a ``max``
    that reduces with NumPy (the same value, as a scalar)."""
    import numpy as np
    import scalesim.memory.double_buffered_scratchpad_mem as mem

    mem.max = lambda *args: np.max(args[0] if len(args) == 1 else np.asarray(args))


_CONFIG = """[general]
run_name = optc

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {ifmap_kb}
FilterSramSzkB = {filter_kb}
OfmapSramSzkB = {ofmap_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {dataflow}
Bandwidth = 10
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = {sparsity}
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 4
RandomNumberGeneratorSeed = 40

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""


def _scalesim(gemms: list[Gemm], array: Array) -> list[dict[str, float]]:
    """Run SCALE-Sim on ``gemms`` (GEMM topology) in a temporary folder; one row of counts per GEMM."""
    if not gemms:
        return []
    _patch_scalesim_numpy()
    from scalesim.scale_sim import scalesim

    sparse = array.sparsity and any(g.nm != (1, 1) for g in gemms)
    with tempfile.TemporaryDirectory(prefix="optc-sim-") as tmp:
        d = Path(tmp)
        fields = {k: getattr(array, k) for k in ("rows", "cols", "ifmap_kb", "filter_kb", "ofmap_kb", "dataflow")}
        (d / "array.cfg").write_text(_CONFIG.format(**fields, sparsity=str(sparse).lower()))
        lines = ["Layer, M, N, K, Sparsity,"]
        lines += [f"g{i}, {g.m}, {g.n}, {g.k}, {g.nm[0] if sparse else 1}:{g.nm[1] if sparse else 1}," for i, g in enumerate(gemms)]
        (d / "gemms.csv").write_text("\n".join(lines) + "\n")
        (d / "layout.csv").write_text("Layer,\n")
        with contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(save_disk_space=True, verbose=False, config=str(d / "array.cfg"), topology=str(d / "gemms.csv"),
                           layout=str(d / "layout.csv"), input_type_gemm=True)
            sim.run_scale(top_path=str(d / "out"))
        reports = d / "out" / "optc"
        compute = _read_csv(reports / "COMPUTE_REPORT.csv")
        access = _read_csv(reports / "DETAILED_ACCESS_REPORT.csv")
    rows = []
    for c, a in zip(compute, access):
        rows.append({
            "cycles": float(c["Total Cycles"]),
            "cycles_with_prefetch": float(c["Total Cycles (incl. prefetch)"]),
            "utilization": float(c["Overall Util %"]) / 100,
            "mapping_efficiency": float(c["Mapping Efficiency %"]) / 100,
            "sram_ifmap_reads": float(a["SRAM IFMAP Reads"]),
            "sram_filter_reads": float(a["SRAM Filter Reads"]),
            "sram_ofmap_writes": float(a["SRAM OFMAP Writes"]),
            "dram_ifmap_reads": float(a["DRAM IFMAP Reads"]),
            "dram_filter_reads": float(a["DRAM Filter Reads"]),
            "dram_ofmap_writes": float(a["DRAM OFMAP Writes"]),
        })
    return rows


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.strip() for h in next(reader)]
        return [dict(zip(header, (v.strip() for v in row))) for row in reader if row]


# --------------------------------------------------------------------------- the report


def simulate(program: Program, options: SimOptions) -> dict[str, Any]:
    """The ``simulation`` section of the compile report: per contraction and in
    total. A module that runs one of several variants per call, chosen at run
    time (drnet's resolutions), is simulated as its dispatcher plus its costliest
    variant (the worst call); ``variants`` holds each variant's totals."""
    array = options.array()
    layers = _simulated_layers(program, options)
    section: dict[str, Any] = {
        "simulator": "SCALE-Sim 3.0.0 (scalesim), bandwidth-estimating mode, 1-byte words; no energy model",
        "array": {**{k: getattr(array, k) for k in ("rows", "cols", "ifmap_kb", "filter_kb", "ofmap_kb", "dataflow", "clock_mhz", "sparsity")},
                  "accelerators": options.accelerators, "interconnect_gbps": options.interconnect_gbps,
                  "interconnect_latency_us": options.interconnect_latency_us},
    }
    if program.callees():
        per_variant = {v.func_name: _simulated_layers(v, options) for v in program.variants()}
        worst = max(per_variant, key=lambda name: sum(r["cycles"] for r in per_variant[name]))
        layers = layers + per_variant[worst]
        section["variants"] = {name: _totals(rows, array.clock_mhz) for name, rows in per_variant.items()}
        section["variant_simulated"] = worst
    return {**section, "layers": layers, "totals": _totals(layers, array.clock_mhz)}


def _totals(layers: list[dict[str, Any]], clock_mhz: float) -> dict[str, Any]:
    cycles = sum(r["cycles"] for r in layers)
    totals = {"cycles": cycles, "seconds": cycles / (clock_mhz * 1e6), "macs": sum(r["macs"] for r in layers)}
    for key in ("compute_cycles", "interconnect_cycles", "interconnect_bytes", *_COUNTS[2:]):
        totals[key] = sum(r[key] for r in layers)
    return totals


def _simulated_layers(program: Program, options: SimOptions) -> list[dict[str, Any]]:
    """A report row per contraction of ``program``'s own function, simulated."""
    array = options.array()
    acc = options.accelerators
    ops = program_gemms(program)
    plans = []
    for o in ops:
        split = o.batch == 1 and acc > 1
        run = replace(o.gemm, k=math.ceil(o.gemm.k / acc)) if split else o.gemm
        if not array.sparsity or (split and run.k % o.gemm.nm[1]):
            run = replace(run, nm=(1, 1))  # no sparsity support, or a K slice that breaks the N:M groups: dense
        plans.append((o, split, run))
    sim = Simulator(array, options.sample_cycles)
    results = sim.run([run for _, _, run in plans])
    layers = []
    for o, split, run in plans:
        r = results[run]
        if split:
            waves, used = 1, acc
            exchange = interconnect_cycles(o.gemm.m * o.gemm.n, acc - 1, options.interconnect_gbps, options.interconnect_latency_us, array.clock_mhz)
            exchanged = (acc - 1) * o.gemm.m * o.gemm.n * WORD_BYTES
        else:
            waves, used, exchange, exchanged = math.ceil(o.batch / acc), min(acc, o.batch), 0, 0
        copies = used * waves if split else o.batch  # GEMMs actually run
        row = {
            "op": o.op,
            "layer": o.layer,
            "batch": o.batch,
            "gemm": {"M": o.gemm.m, "N": o.gemm.n, "K": o.gemm.k},
            "nm": f"{o.gemm.nm[0]}:{o.gemm.nm[1]}" if run.nm != (1, 1) else None,
            "macs": o.batch * o.gemm.macs,
            "mapping": "reduction split, partial sums exchanged" if split else ("one GEMM" if o.batch == 1 else f"{o.batch} GEMMs in {waves} wave(s)"),
            "accelerators_used": used,
            "compute_cycles": waves * r["cycles"],
            "interconnect_cycles": exchange,
            "interconnect_bytes": exchanged,
            "cycles": waves * r["cycles"] + exchange,
            "utilization": r["utilization"],
            **{key: copies * r[key] for key in _COUNTS[2:]},
        }
        if "sampled" in r:
            row["sampled"] = r["sampled"]
        layers.append(row)
    return layers


class SimTarget(Target):
    name = "sim"
    summary = "a simulated systolic-array accelerator (SCALE-Sim v3) for cycles; numbers from the cpu artifact (local-task)"
    Options = SimOptions

    def available(self) -> tuple[bool, str]:
        try:
            import scalesim.scale_sim  # noqa: F401
        except ImportError as e:
            return False, f"scalesim is not installed ({e}); pip install scalesim==3.0.0"
        return True, ""

    def _cpu(self) -> tuple[Target, Any]:
        from optc.api import build_options
        from optc.registry import load_registry

        cpu = load_registry().target("cpu")
        return cpu, build_options("cpu", cpu.Options, {})

    def supports(self, program: Program, options: Any) -> tuple[bool, str]:
        cpu, cpu_options = self._cpu()
        return cpu.supports(program, cpu_options)

    def compile(self, program: Program, options: SimOptions) -> Artifact:
        from optc.dynamic_batch import example_variant

        cpu, cpu_options = self._cpu()
        built = cpu.compile(program, cpu_options)
        # --dynamic-batch: the variant at the example batch (its dispatcher holds no contraction)
        return Artifact(target=self.name, vmfb=built.vmfb, options=options, compile_seconds=built.compile_seconds,
                        flags_used=built.flags_used, extra_report={"simulation": simulate(example_variant(program), options)})

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        cpu, cpu_options = self._cpu()
        return cpu.open(artifact_vmfb, cpu_options)


@hookimpl
def optc_register_targets(register):
    register(SimTarget())
