"""Render an ``optc.report/1`` report (``"kind": "compile"`` or ``"bench"``) as
one self-contained HTML page.

The page has a title naming the model and target, a summary table (parameters
and MACs before/after, FLOP reduction, verification; for bench reports the
latencies, speedups, realized efficiency and artifact sizes), the per-layer
table, and plots drawn with matplotlib (Agg backend, imported lazily) and
inlined as base64 ``data:image/svg+xml`` URIs: MACs per layer (``#plot-macs``),
parameters per layer (``#plot-params``), for bench reports latency
(``#plot-latency``), and for reports with a ``simulation`` section (a simulating
target such as ``sim``) simulated cycles per layer (``#plot-cycles``: one series
for a compile report, dense vs compressed for a bench report).

Nothing is fetched from anywhere: no CDN, no web fonts, no external images. A
Content-Security-Policy ``<meta>`` (``default-src 'none'; img-src data:;
style-src 'unsafe-inline'``) makes the browser hold the page to that. Every
string taken from the report is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_html", "PLOT_IDS"]

# Ids of the <img> elements the page can hold, in page order.
PLOT_IDS = ("plot-macs", "plot-params", "plot-latency", "plot-cycles")

LATENCY_VARIANTS = ("eager", "dense", "compressed")
SPEEDUPS = ("compressed_vs_dense", "compressed_vs_eager", "dense_vs_eager")

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.95em; }
.pass { color: #176f2c; font-weight: bold; }
.fail { color: #b00020; font-weight: bold; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.9em; }
"""

Row = tuple[str, str]  # (escaped header, escaped cell html)


# ---------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> str:
    """Thousands-separated integer; anything else escaped as is; None as a dash."""
    if v is None:
        return "—"
    if _is_num(v) and (isinstance(v, int) or float(v).is_integer()) and math.isfinite(v):
        return f"{int(v):,}"
    return _num(v)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return _esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return _esc(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.{max(digits - 1, 1)}e}"
        return f"{v:.{digits}g}"
    return _esc(v)


def _ratio(v: Any) -> str:
    return "—" if v is None else (f"{_num(v, 3)}×" if _is_num(v) else _esc(v))


def _bytes(v: Any) -> str:
    if not _is_num(v):
        return _int(v)
    units = ("B", "KiB", "MiB", "GiB")
    x, i = float(v), 0
    while abs(x) >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{int(v):,} B" if i == 0 else f"{int(v):,} B ({x:.1f} {units[i]})"


def _before_after(b: Any, a: Any, fmt=_int) -> str:
    s = f"{fmt(b)} → {fmt(a)}"
    if _is_num(b) and _is_num(a) and a > 0 and b > 0 and a != b:
        s += f' <span class="sub">({b / a:.3g}× fewer)</span>' if b > a else f' <span class="sub">({a / b:.3g}× more)</span>'
    return s


def _options(opts: Any) -> str:
    if not isinstance(opts, Mapping) or not opts:
        return ""
    return ", ".join(f"{_esc(k)}={_esc(v if isinstance(v, str) else json.dumps(v, default=str))}" for k, v in opts.items())


def _shape(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "×".join(_esc(d) for d in shape) if shape else "scalar"
    return "—" if shape is None else _esc(shape)


def _table(rows: Iterable[Row], table_id: str = "") -> str:
    """A two-column table: header cell, value cell (both already escaped)."""
    body = "\n".join(f"<tr><th>{h}</th><td>{c}</td></tr>" for h, c in rows)
    tid = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{tid}>\n{body}\n</table>"


def _grid(header: Sequence[str], rows: Iterable[Sequence[tuple[str, bool]]], table_id: str = "") -> str:
    """A table with a header row; each cell is (escaped html, numeric?)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    lines = []
    for r in rows:
        lines.append("<tr>" + "".join(f"<td class=\"num\">{c}</td>" if n else f"<td>{c}</td>" for c, n in r) + "</tr>")
    tid = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{tid}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>"


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else []


# ---------------------------------------------------------------- sections


def _summary_rows(report: Mapping[str, Any]) -> list[Row]:
    target = _dict(report.get("target"))
    totals = _dict(report.get("totals"))
    rows: list[Row] = [
        ("Report", f"{_esc(report.get('kind', 'compile'))} <span class=\"sub\">({_esc(report.get('schema', '?'))})</span>"),
        ("Model", f"<code>{_esc(report.get('model', '?'))}</code>"),
        ("Target", f"{_esc(target.get('name', '?'))} <span class=\"sub\">{_options(target.get('options'))}</span>"),
    ]
    methods = [m for m in _list(report.get("methods")) if isinstance(m, Mapping)]
    if methods:
        rows.append(("Methods", "<br>".join(f"<code>{_esc(m.get('name', '?'))}</code> <span class=\"sub\">{_options(m.get('options'))}</span>" for m in methods)))
    else:
        rows.append(("Methods", "none"))
    if totals:
        rows.append(("Parameters", _before_after(totals.get("params_before"), totals.get("params_after"))))
        if "param_bytes_before" in totals or "param_bytes_after" in totals:
            rows.append(("Parameter bytes", f"{_bytes(totals.get('param_bytes_before'))} → {_bytes(totals.get('param_bytes_after'))}"))
        rows.append(("MACs", f"{_int(totals.get('macs_before'))} → {_int(totals.get('macs_after'))}"))
        rows.append(("FLOP reduction", _ratio(totals.get("flop_reduction"))))
    inputs = [i for i in _list(report.get("inputs")) if isinstance(i, Mapping)]
    if inputs:
        rows.append(("Inputs", ", ".join(f"{_shape(i.get('shape'))} {_esc(i.get('dtype', ''))}" for i in inputs)))
    calib = _dict(report.get("calibration"))
    if calib:
        rows.append(("Calibration", f"{_int(calib.get('samples'))} samples <span class=\"sub\">{_esc(calib.get('path', ''))}</span>"))
    acc = _dict(report.get("accuracy"))
    if acc:
        rows.append((
            "Top-1",
            " → ".join(f"{_esc(label)} {_percent(acc.get(key))}" for key, label in
                       (("original", "original"), ("compressed_reference", "compressed reference"), ("artifact", "artifact")))
            + f" <span class=\"sub\">{_int(acc.get('samples'))} samples of {_esc(acc.get('path', ''))}</span>",
        ))
    return rows


def _percent(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "?"


def _verification_rows(ver: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "passed" in ver:
        ok = ver.get("passed") is True
        rows.append(("Verification", f"<span class=\"{'pass' if ok else 'fail'}\">{'PASS' if ok else 'FAIL'}</span>"))
    for key, label in (("compile_error", "Compile error (artifact vs compressed reference)"), ("compression_error", "Compression error (compressed reference vs original)")):
        err = ver.get(key)
        if isinstance(err, Mapping):
            rows.append((_esc(label), f"max rel {_num(err.get('max_rel'), 3)}, max abs {_num(err.get('max_abs'), 3)}"))
    if "tolerance" in ver:
        rows.append(("Tolerance (relative)", _num(ver.get("tolerance"), 3)))
    if "verified_with" in ver:
        rows.append(("Verified with", _esc(ver.get("verified_with"))))
    return rows


def _artifact_rows(art: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "path" in art:
        rows.append(("Artifact", f"<code>{_esc(art.get('path'))}</code>"))
    if "bytes" in art:
        rows.append(("Artifact size", _bytes(art.get("bytes"))))
    if "compile_seconds" in art:
        rows.append(("Compile time", f"{_num(art.get('compile_seconds'), 3)} s"))
    return rows


def _bench_section(bench: Mapping[str, Any]) -> str:
    parts: list[str] = []
    setup = [(k.capitalize(), _int(bench.get(k))) for k in ("batch", "threads", "rounds") if k in bench]
    if _is_num(bench.get("other_cpu_share")):
        setup.append(("CPU used by other processes while timing", _percent(bench["other_cpu_share"])))
    if setup:
        parts.append(_table(setup))
    lat = _dict(bench.get("latency_ms"))
    lat_rows = []
    for v in LATENCY_VARIANTS:
        s = lat.get(v)
        if isinstance(s, Mapping):
            how = _dict(bench.get("timing")).get(v)
            lat_rows.append([(_esc(v), False), (_num(s.get("median")), True), (_num(s.get("p10")), True), (_num(s.get("p90")), True),
                             (_num(s.get("min")), True), (_num(s.get("max")), True), (_int(s.get("samples")), True),
                             (_esc(how) if how is not None else "—", False)])
    if lat_rows:
        header = ["variant", "median (ms)", "p10 (ms)", "p90 (ms)", "min (ms)", "max (ms)", "samples", "timed how"]
        parts.append(_grid(header, lat_rows, "latency-table"))
    elif lat == {} and "latency_ms" in bench:
        parts.append("<p>No latency measurements.</p>")
    rows: list[Row] = []
    speed = _dict(bench.get("speedup"))
    for k in SPEEDUPS:
        if k in speed:
            rows.append((f"Speedup {_esc(k.replace('_vs_', ' vs '))}", _ratio(speed.get(k))))
    if "flop_reduction" in bench:
        rows.append(("FLOP reduction", _ratio(bench.get("flop_reduction"))))
    if "realized_efficiency" in bench:
        rows.append(("Realized efficiency", _num(bench.get("realized_efficiency"), 3)))
    params = _dict(bench.get("params"))
    if params:
        rows.append(("Parameters (dense → compressed)", _before_after(params.get("dense"), params.get("compressed"))))
    ab = _dict(bench.get("artifact_bytes"))
    if ab:
        rows.append(("Artifact size (dense → compressed)", f"{_bytes(ab.get('dense'))} → {_bytes(ab.get('compressed'))}"))
    sim = _dict(bench.get("simulation"))
    if sim:
        dense, compressed = _dict(sim.get("dense")), _dict(sim.get("compressed"))
        rows.append(("Simulated cycles (dense → compressed)", _before_after(dense.get("cycles"), compressed.get("cycles"))))
        ms = lambda t: _num(t.get("seconds") * 1e3, 4) + " ms" if _is_num(t.get("seconds")) else "—"  # noqa: E731
        rows.append(("Simulated time (dense → compressed)", f"{ms(dense)} → {ms(compressed)}"))
        if "speedup" in sim:
            rows.append(("Simulated speedup compressed vs dense", _ratio(sim.get("speedup"))))
    if rows:
        parts.append(_table(rows))
    return "\n".join(parts)


def _changes_section(methods: Sequence[Any]) -> str:
    rows = []
    for m in methods:
        if not isinstance(m, Mapping):
            continue
        for c in _list(m.get("changes")):
            if isinstance(c, Mapping):
                rows.append([(f"<code>{_esc(m.get('name', '?'))}</code>", False), (f"<code>{_esc(c.get('layer', '?'))}</code>", False), (_esc(c.get("action", "")), False)])
    if not rows:
        return ""
    return "<h2>Method changes</h2>\n" + _grid(["method", "layer", "action"], rows, "changes-table")


def _layers_section(layers: Sequence[Mapping[str, Any]]) -> str:
    if not layers:
        return "<h2>Layers</h2>\n<p>No weighted layers in this report.</p>"
    rows = []
    for r in layers:
        rows.append(
            [
                (f"<code>{_esc(r.get('layer', '?'))}</code>", False),
                (_esc(r.get("kind", "")), False),
                (_shape(r.get("weight_shape")), True),
                (_int(r.get("params_before")), True),
                (_int(r.get("params_after")), True),
                (_int(r.get("macs_before")), True),
                (_int(r.get("macs_after")), True),
                (", ".join(_esc(m) for m in _list(r.get("methods"))) or "—", False),
            ]
        )
    header = ["layer", "kind", "weight shape", "params before", "params after", "MACs before", "MACs after", "methods"]
    return "<h2>Layers</h2>\n" + _grid(header, rows, "layers-table")


# ---------------------------------------------------------------- plots


def _plain(text: Any, limit: int = 48) -> str:
    """A label matplotlib draws literally (no mathtext), shortened for an axis."""
    s = str(text)
    if len(s) > limit:
        s = "…" + s[-(limit - 1):]
    return s.replace("$", r"\$")


def _figure_uri(fig: "Figure") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _value(v: Any) -> float:
    return float(v) if _is_num(v) and math.isfinite(v) else 0.0


def _layer_bars(plt: Any, layers: Sequence[Mapping[str, Any]], key: str, xlabel: str, title: str) -> str:
    names = [r.get("layer", "?") for r in layers]
    before = [_value(r.get(f"{key}_before")) for r in layers]
    after = [_value(r.get(f"{key}_after")) for r in layers]
    return _grouped_bars(plt, names, [("before", before, "#9e9e9e"), ("after", after, "#1f77b4")], xlabel, title)


def _grouped_bars(plt: Any, layers: Sequence[Any], series: Sequence[tuple[str, Sequence[float], str]], xlabel: str, title: str) -> str:
    """Horizontal bars per layer, one bar per (label, values, color) series side by side."""
    import numpy as np

    names = [_plain(layer) for layer in layers]
    n = len(names)
    y = np.arange(n)
    fig, ax = plt.subplots(figsize=(8.0, max(2.4, 0.42 * n + 1.3)))
    try:
        h = 0.8 / len(series)
        for i, (label, values, color) in enumerate(series):
            ax.barh(y + (i - (len(series) - 1) / 2) * h, values, height=h, label=label, color=color)
        ax.set_yticks(y, labels=names)
        ax.set_ylim(n - 0.5, -0.5)  # first layer at the top, like the table
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        ax.grid(axis="x", color="#e5e5e5")
        ax.set_axisbelow(True)
        if len(series) > 1:
            ax.legend(loc="best", frameon=False)
        return _figure_uri(fig)
    finally:
        plt.close(fig)


def _latency_bars(plt: Any, lat: Mapping[str, Any]) -> tuple[str, str] | None:
    """Median bars with p10–p90 whiskers on a linear axis scaled to the whiskers,
    so one slow outlier run cannot flatten the medians. Reports without
    percentiles get min–max whiskers on a log axis instead. Returns (data URI,
    what the whiskers show)."""
    variants = [v for v in LATENCY_VARIANTS if isinstance(lat.get(v), Mapping) and _is_num(lat[v].get("median"))]
    if not variants:
        return None
    med = [_value(lat[v]["median"]) for v in variants]

    def bound(v: str, key: str, default: float) -> float:
        x = lat[v].get(key)
        return float(x) if _is_num(x) and math.isfinite(x) else default

    percentiles = all(_is_num(lat[v].get("p10")) and _is_num(lat[v].get("p90")) for v in variants)
    low, high, whiskers = ("p10", "p90", "p10–p90") if percentiles else ("min", "max", "min–max")
    log_scale = not percentiles and min(med) > 0
    lo = [max(m - bound(v, low, m), 0.0) for m, v in zip(med, variants)]
    hi = [max(bound(v, high, m) - m, 0.0) for m, v in zip(med, variants)]
    colors = {"eager": "#ff7f0e", "dense": "#9e9e9e", "compressed": "#1f77b4"}
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    try:
        x = list(range(len(variants)))
        ax.bar(x, med, yerr=[lo, hi], capsize=6, color=[colors[v] for v in variants], width=0.6)
        ax.set_xticks(x, labels=variants)
        ax.set_ylabel("latency (ms)" + (", log scale" if log_scale else ""))
        ax.set_title(f"Latency: median, whiskers {whiskers}")
        for xi, m in zip(x, med):
            ax.annotate(f"{m:.3g} ms", (xi, m), xytext=(8, 3), textcoords="offset points", fontsize=9)
        top = max(m + h for m, h in zip(med, hi)) or 1.0
        if log_scale:
            ax.set_yscale("log")
            ax.set_ylim(min(m - l for m, l in zip(med, lo)) / 1.5 or min(med) / 2, top * 1.5)
        else:
            ax.set_ylim(0, top * 1.15)
        ax.grid(axis="y", color="#e5e5e5")
        ax.set_axisbelow(True)
        return _figure_uri(fig), whiskers
    finally:
        plt.close(fig)


def _plots(report: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """[(id, alt text, data URI)] for the plots this report supports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str, str]] = []
    # Deterministic SVG element ids; text drawn as paths (no fonts needed by the viewer).
    with matplotlib.rc_context({"svg.hashsalt": "optc", "svg.fonttype": "path"}):
        if layers:
            out.append(("plot-macs", "MACs per layer, before and after compression",
                        _layer_bars(plt, layers, "macs", "MACs (multiply-accumulates)", "MACs per layer")))
            out.append(("plot-params", "Parameters per layer, before and after compression",
                        _layer_bars(plt, layers, "params", "parameters", "Parameters per layer")))
        bench = _dict(report.get("bench"))
        if report.get("kind") == "bench" and bench:
            drawn = _latency_bars(plt, _dict(bench.get("latency_ms")))
            if drawn:
                uri, whiskers = drawn
                out.append(("plot-latency", f"Latency in milliseconds (median, whiskers {whiskers}) for eager, dense and compressed", uri))
        cycles = _cycle_bars(plt, report)
        if cycles:
            out.append(cycles)
    return out


def _cycle_bars(plt: Any, report: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Simulated cycles per layer: dense vs compressed from a bench report's
    ``bench.simulation``, else the one program of a report's ``simulation``."""
    from optc.bench import layer_cycles

    compared = _dict(_dict(report.get("bench")).get("simulation"))
    rows = [r for r in _list(compared.get("per_layer")) if isinstance(r, Mapping)]
    if rows:
        names = [n for n in ("dense", "compressed") if rows and f"{n}_cycles" in rows[0]]
        colors = {"dense": "#9e9e9e", "compressed": "#1f77b4"}
        series = [(n, [_value(r.get(f"{n}_cycles")) for r in rows], colors[n]) for n in names]
        layers = [r.get("layer", "?") for r in rows]
        alt = f"Simulated cycles per layer, {' vs '.join(names)}"
    else:
        sim_rows = [r for r in _list(_dict(report.get("simulation")).get("layers")) if isinstance(r, Mapping) and _is_num(r.get("cycles"))]
        if not sim_rows:
            return None
        per_layer = layer_cycles({"layers": sim_rows})
        layers, series = list(per_layer), [("cycles", [_value(c) for c in per_layer.values()], "#1f77b4")]
        alt = "Simulated cycles per layer"
    uri = _grouped_bars(plt, layers, series, "simulated cycles", "Simulated cycles per layer")
    return "plot-cycles", alt, uri


# ---------------------------------------------------------------- page


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page (a ``str``)."""
    if not isinstance(report, Mapping):
        raise TypeError(f"render_html expects a report dict, got {type(report).__name__}")
    kind = report.get("kind", "compile")
    model = report.get("model", "?")
    target = _dict(report.get("target")).get("name", "?")
    layers = [r for r in _list(report.get("layers")) if isinstance(r, Mapping)]
    title = f"optc {kind} report: {model} on {target}"

    sections: list[str] = []
    summary = _summary_rows(report)
    ver = _dict(report.get("verification"))
    summary += _verification_rows(ver)
    summary += _artifact_rows(_dict(report.get("artifact")))
    sections.append("<h2>Summary</h2>\n" + _table(summary, "summary-table"))
    if kind == "bench":
        bench = _dict(report.get("bench"))
        sections.append("<h2>Benchmark</h2>\n" + (_bench_section(bench) if bench else "<p>No benchmark data.</p>"))
    plots = _plots(report, layers)
    if plots:
        figs = "\n".join(
            f'<figure><img id="{_esc(pid)}" alt="{_esc(alt)}" src="{uri}"><figcaption>{_esc(alt)}</figcaption></figure>'
            for pid, alt, uri in plots
        )
        sections.append("<h2>Plots</h2>\n" + figs)
    sections.append(_layers_section(layers))
    changes = _changes_section(_list(report.get("methods")))
    if changes:
        sections.append(changes)

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n"
        f'<p class="sub">Generated by optc from a <code>{_esc(report.get("schema", "?"))}</code> report. FLOPs are counted as multiply-accumulates (MACs).</p>\n'
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
