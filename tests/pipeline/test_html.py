"""The HTML report renderer: unit tests on hand-written reports, then the page
opened in a real headless Chromium (tables in the DOM, the inlined plots
decoded and painted)."""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from optc.html import render_html

EVIL = "<script>alert('x')</script>"
DATA_URI = re.compile(r'<img\b[^>]*?\bsrc="data:(image/(?:svg\+xml|png));base64,([A-Za-z0-9+/=]+)"')
IMG_ID = re.compile(r'<img\b[^>]*?\bid="([^"]+)"')


def compile_report() -> dict[str, Any]:
    return {
        "schema": "optc.report/1",
        "kind": "compile",
        "model": "tests.models:tiny & <friends>",
        "target": {"name": "cpu", "options": {"cpu": "host", "fast": True}},
        "methods": [
            {
                "name": "lowrank",
                "options": {"rank": 8, "energy": 0.9, "layers": [], "skip": [], "force": False},
                "changes": [
                    {"layer": "fc1.weight", "action": "factorized rank 8", "details": {"rank": 8}},
                    {"layer": EVIL, "action": "skipped: rank 8 would not reduce FLOPs (8·(16+4) ≥ 16·4)", "details": {}},
                ],
            }
        ],
        "layers": [
            {"layer": "fc1.weight", "kind": "matmul", "weight_shape": [64, 32], "ops_before": 1, "ops_after": 2,
             "params_before": 2048, "params_after": 768, "macs_before": 8192, "macs_after": 3072, "methods": ["lowrank"]},
            {"layer": "conv.$w$", "kind": "conv", "weight_shape": [8, 3, 3, 3], "ops_before": 1, "ops_after": 1,
             "params_before": 216, "params_after": 216, "macs_before": 55296, "macs_after": 55296, "methods": []},
            {"layer": EVIL, "kind": "matmul", "weight_shape": [4, 16], "ops_before": 1, "ops_after": 1,
             "params_before": 64, "params_after": 64, "macs_before": 256, "macs_after": 256, "methods": []},
        ],
        "totals": {"params_before": 2328, "params_after": 1048, "param_bytes_before": 9312, "param_bytes_after": 4192,
                   "macs_before": 63744, "macs_after": 58624, "weighted_macs_before": 63744, "weighted_macs_after": 58624,
                   "flop_reduction": 63744 / 58624},
        "verification": {"compile_error": {"max_abs": 3.3e-08, "max_rel": 3.7e-07},
                         "compression_error": {"max_abs": 0.2, "max_rel": 0.69},
                         "tolerance": 1e-4, "passed": True, "verified_with": "the artifact itself"},
        "artifact": {"path": "/tmp/out/<tiny>.vmfb", "bytes": 235911, "compile_seconds": 1.01},
        "inputs": [{"shape": [4, 32], "dtype": "float32"}],
    }


def bench_report(compressed: bool = True) -> dict[str, Any]:
    r = compile_report()
    r["kind"] = "bench"
    del r["artifact"], r["verification"]
    # median, p10, p90, min, max
    stats = {"eager": (0.9, 0.85, 1.1, 0.8, 1.4), "dense": (0.5, 0.47, 0.6, 0.45, 0.7), "compressed": (0.15, 0.13, 0.2, 0.12, 0.3)}
    variants = ["eager", "dense"] + (["compressed"] if compressed else [])
    r["bench"] = {
        "batch": 4, "threads": 2, "rounds": 50, "other_cpu_share": 0.25,
        "timing": {v: ("own process, PyTorch defaults, 2 threads" if v == "eager" else "own process, IREE runtime (cpu target), 2 task workers")
                   for v in variants},
        "latency_ms": {v: dict(zip(("median", "p10", "p90", "min", "max"), stats[v]), samples=50) for v in variants},
        "speedup": {"dense_vs_eager": 1.8, **({"compressed_vs_dense": 3.33, "compressed_vs_eager": 6.0} if compressed else {})},
        "flop_reduction": 1.087, "realized_efficiency": 0.65,
        "params": {"dense": 2328, "compressed": 1048 if compressed else 2328},
        "artifact_bytes": {"dense": 1_100_000, "compressed": 235_911 if compressed else 1_100_000},
    }
    if not compressed:
        r["methods"] = []
    return r


def images(page: str) -> list[tuple[str, bytes]]:
    return [(mime, base64.b64decode(b64, validate=True)) for mime, b64 in DATA_URI.findall(page)]


def assert_valid_image(mime: str, data: bytes) -> None:
    if mime == "image/svg+xml":
        root = ET.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
        assert root.get("viewBox") and root.get("width"), "SVG needs an intrinsic size to lay out in <img>"
    else:
        import io

        from PIL import Image

        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def assert_self_contained(page: str) -> None:
    low = page.lower()
    assert "http://" not in low and "https://" not in low
    assert not re.search(r'\b(?:src|href)\s*=\s*"(?!data:)', page), "only data: URIs may be referenced"
    assert "@import" not in low and "url(" not in low


# ------------------------------------------------------------ unit tests


def test_compile_page_has_title_summary_layers_and_plots():
    page = render_html(compile_report())
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>optc compile report: tests.models:tiny &amp; &lt;friends&gt; on cpu</title>" in page
    for name in ("fc1.weight", "conv.$w$"):
        assert f"<code>{name}</code>" in page
    # summary: params, MACs, FLOP reduction, verification
    assert "2,328 → 1,048" in page and "63,744 → 58,624" in page
    assert "1.09×" in page
    assert '<span class="pass">PASS</span>' in page and "3.70e-07" in page
    assert "64×32" in page and "8×3×3×3" in page
    assert 'id="layers-table"' in page and 'id="summary-table"' in page
    assert IMG_ID.findall(page) == ["plot-macs", "plot-params"]
    assert all(re.search(rf'<img\b[^>]*\bid="{i}"[^>]*\balt="[^"]+"', page) for i in ("plot-macs", "plot-params"))
    assert_self_contained(page)


def test_every_report_string_is_escaped():
    r = compile_report()
    r["model"] = r["target"]["name"] = r["methods"][0]["name"] = EVIL
    r["target"]["options"] = {EVIL: EVIL}
    r["verification"]["verified_with"] = EVIL
    r["layers"][0]["kind"] = EVIL
    r["layers"][0]["methods"] = [EVIL]
    page = render_html(r)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "/tmp/out/&lt;tiny&gt;.vmfb" in page
    assert page.count("<img") == 2  # nothing from the report became markup


def test_failed_verification_is_marked():
    r = compile_report()
    r["verification"]["passed"] = False
    assert '<span class="fail">FAIL</span>' in render_html(r)


@pytest.mark.parametrize("compressed", [True, False], ids=["with-compressed", "dense-only"])
def test_bench_page(compressed: bool):
    page = render_html(bench_report(compressed))
    assert "optc bench report" in page
    assert IMG_ID.findall(page) == ["plot-macs", "plot-params", "plot-latency"]
    table = page[page.index('id="latency-table"'):]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><td>(\w+)</td>", table)
    assert rows == (["eager", "dense", "compressed"] if compressed else ["eager", "dense"])
    assert "0.9</td>" in table and "1.4</td>" in table and "0.45</td>" in table and "1.1</td>" in table
    assert "<td>own process, PyTorch defaults, 2 threads</td>" in table
    assert "CPU used by other processes while timing</th><td>25" in page
    assert "Speedup dense vs eager</th><td>1.8×" in page
    assert ("Speedup compressed vs dense</th><td>3.33×" in page) == compressed
    assert "Realized efficiency</th><td>0.65" in page
    assert "1,100,000 B" in page
    assert_self_contained(page)


def drawn_axes(monkeypatch, report: dict[str, Any]) -> tuple[list[Any], str]:
    """The first axes of every figure render_html draws (in order), and the page."""
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    page = render_html(report)
    monkeypatch.setattr(plt, "close", close)
    axes = [f.axes[0] for f in figures]
    for fig in figures:
        close(fig)
    return axes, page


def latency_axes(monkeypatch, report: dict[str, Any]) -> tuple[Any, str]:
    """The latency chart's axes as drawn by render_html, and the page."""
    axes, page = drawn_axes(monkeypatch, report)
    return axes[-1], page


def whisker_spans(ax: Any) -> list[float]:
    """(low, high) of each whisker, flattened."""
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = bars.lines[2][0].get_segments()
    return [float(y) for s in segments for y in (s[0][1], s[1][1])]


def test_latency_chart_scales_to_percentile_whiskers_not_the_slowest_run(monkeypatch):
    r = bench_report()
    r["bench"]["latency_ms"]["eager"]["max"] = 54.0  # one slow outlier run
    ax, page = latency_axes(monkeypatch, r)
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.9, 0.5, 0.15])  # bars are medians
    assert whisker_spans(ax) == pytest.approx([0.85, 1.1, 0.47, 0.6, 0.13, 0.2])  # p10-p90
    assert ax.get_yscale() == "linear" and 1.1 < ax.get_ylim()[1] < 2.0  # the outlier does not set the scale
    assert ax.get_title() == "Latency: median, whiskers p10–p90"
    assert 'alt="Latency in milliseconds (median, whiskers p10–p90)' in page


def test_latency_chart_without_percentiles_shows_min_max_on_a_log_axis(monkeypatch):
    r = bench_report()
    for s in r["bench"]["latency_ms"].values():
        del s["p10"], s["p90"]
    r["bench"]["latency_ms"]["eager"]["max"] = 54.0
    ax, page = latency_axes(monkeypatch, r)
    assert whisker_spans(ax) == pytest.approx([0.8, 54.0, 0.45, 0.7, 0.12, 0.3])
    assert ax.get_yscale() == "log" and ax.get_title() == "Latency: median, whiskers min–max"
    assert 'alt="Latency in milliseconds (median, whiskers min–max)' in page


def test_inlined_images_decode():
    for report, n in ((compile_report(), 2), (bench_report(), 3), (bench_report(False), 3)):
        imgs = images(render_html(report))
        assert len(imgs) == n
        for mime, data in imgs:
            assert_valid_image(mime, data)


def test_no_layers_no_layer_plots():
    r = compile_report()
    r["layers"] = []
    page = render_html(r)
    assert "No weighted layers" in page and "<img" not in page


def test_figures_are_closed_and_input_untouched():
    import matplotlib.pyplot as plt

    r = bench_report()
    before = copy.deepcopy(r)
    render_html(r)
    assert plt.get_fignums() == []
    assert r == before


def test_output_is_deterministic():
    assert render_html(bench_report()) == render_html(bench_report())


# ------------------------------------------------------------ real browser

CHROMIUM_TIMEOUT_S = 60
LOAD_PROBE = (
    "<script>window.addEventListener('load', function () {"
    " var n = 0; for (var i = 0; i < document.images.length; i++) {"
    " var im = document.images[i]; if (im.complete && im.naturalWidth > 0) n++; }"
    " document.title = 'decoded-images:' + n; });</script>"
)


def chromium_or_skip() -> str:
    exe = shutil.which("chromium")
    if not exe:
        pytest.skip("chromium not installed (scripts/setup.sh installs it with apt when run as root)")
    return exe


def run_chromium(exe: str, tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium once with a fresh profile; its stdout. The whole
    process group it starts is killed if it outlives the timeout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args, url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s: {' '.join(cmd)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err[-3000:]}"
    return out


@pytest.mark.parametrize("kind", ["compile", "bench"])
def test_page_in_headless_chromium(tmp_path: Path, kind: str):
    exe = chromium_or_skip()
    report = compile_report() if kind == "compile" else bench_report()
    page = render_html(report)
    n_plots = len(IMG_ID.findall(page))
    assert n_plots == (2 if kind == "compile" else 3)
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")

    # 1. The DOM Chromium built holds the tables and the images.
    dom = run_chromium(exe, tmp_path, html_path.as_uri(), "--dump-dom")
    assert '<table id="summary-table">' in dom and '<table id="layers-table">' in dom
    assert "<code>fc1.weight</code>" in dom and "&lt;script&gt;" in dom
    for pid in IMG_ID.findall(page):
        assert re.search(rf'<img\b[^>]*\bid="{pid}"', dom), pid
    if kind == "bench":
        assert '<table id="latency-table">' in dom

    # 2. Every inlined plot decoded: a probe script (placed ahead of the page's
    #    Content-Security-Policy, so the policy still governs the images) counts
    #    images with a natural width once the window has loaded.
    probed = tmp_path / "probe.html"
    probed.write_text(page.replace("<head>", "<head>" + LOAD_PROBE, 1), encoding="utf-8")
    dom = run_chromium(exe, tmp_path, probed.as_uri(), "--dump-dom")
    m = re.search(r"<title>decoded-images:(\d+)</title>", dom)
    assert m, "the load probe did not run: " + dom[:500]
    assert int(m.group(1)) == n_plots

    # 3. The page paints: a screenshot that is not blank, with the plots' bar colour in it.
    import matplotlib.image

    shot = tmp_path / "shot.png"
    run_chromium(exe, tmp_path, html_path.as_uri(), f"--screenshot={shot}", "--window-size=1200,2000")
    assert shot.is_file() and shot.stat().st_size > 0
    px = matplotlib.image.imread(str(shot))[..., :3]  # floats in [0, 1]
    assert px.shape[0] >= 1000 and px.shape[1] >= 1000
    assert px.std() > 0.05, f"screenshot looks blank (std {px.std():.4f})"
    blue = (abs(px[..., 0] - 0x1F / 255) < 0.03) & (abs(px[..., 1] - 0x77 / 255) < 0.03) & (abs(px[..., 2] - 0xB4 / 255) < 0.03)
    assert blue.sum() > 2000, f"the plots' 'after' bars are not on screen ({int(blue.sum())} px)"


def test_calibration_and_accuracy_are_in_the_summary():
    report = compile_report()
    report["calibration"] = {"path": "calib.npz", "samples": 1024}
    report["accuracy"] = {"path": "test.npz", "samples": 360, "original": 0.9861, "compressed_reference": 0.9833, "artifact": 0.9833}
    page = render_html(report)
    assert "1,024 samples" in page
    assert "original 98.61% → compressed reference 98.33% → artifact 98.33%" in page
    assert "360 samples of test.npz" in page


# ------------------------------------------------------------ simulated cycles


def with_simulation(report: dict[str, Any]) -> dict[str, Any]:
    """The report as a simulating target (sim) writes it: fc1 a factor chain of two ops, one op without a layer."""
    rows = [("fc1.weight", "linalg.matmul", 1200), ("fc1.weight", "linalg.matmul", 800), (None, "linalg.batch_matmul", 300)]
    report["simulation"] = {
        "layers": [{"layer": layer, "op": op, "cycles": c} for layer, op, c in rows],
        "totals": {"cycles": 2300, "seconds": 2300 / 500e6},
    }
    if report["kind"] == "bench":
        report["bench"]["simulation"] = {
            "dense": {"cycles": 7300, "seconds": 7300 / 500e6}, "compressed": {"cycles": 2300, "seconds": 2300 / 500e6},
            "speedup": 7300 / 2300,
            "per_layer": [{"layer": "fc1.weight", "dense_cycles": 7000, "compressed_cycles": 2000},
                          {"layer": "linalg.batch_matmul", "dense_cycles": 300, "compressed_cycles": 300}],
        }
    return report


def cycle_axes(monkeypatch, report: dict[str, Any]) -> tuple[Any, str]:
    """The simulated-cycles chart's axes as drawn by render_html, and the page."""
    axes, page = drawn_axes(monkeypatch, report)
    (ax,) = [a for a in axes if a.get_title() == "Simulated cycles per layer"]
    return ax, page


def bars(ax: Any) -> dict[str, list[float]]:
    """Bar widths (cycles) per series label, layers in order."""
    return {c.get_label(): [p.get_width() for p in c.patches] for c in ax.containers}


def test_compile_report_with_simulation_plots_cycles_per_layer(monkeypatch):
    ax, page = cycle_axes(monkeypatch, with_simulation(compile_report()))
    assert IMG_ID.findall(page) == ["plot-macs", "plot-params", "plot-cycles"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fc1.weight", "linalg.batch_matmul"]
    assert bars(ax) == {"cycles": [2000, 300]}  # fc1's two ops summed
    assert 'alt="Simulated cycles per layer"' in page


def test_bench_report_with_simulation_plots_dense_vs_compressed_cycles(monkeypatch):
    ax, page = cycle_axes(monkeypatch, with_simulation(bench_report()))
    assert IMG_ID.findall(page) == ["plot-macs", "plot-params", "plot-latency", "plot-cycles"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fc1.weight", "linalg.batch_matmul"]
    assert bars(ax) == {"dense": [7000, 300], "compressed": [2000, 300]}
    assert "Simulated speedup compressed vs dense</th><td>3.17×" in page
    assert "Simulated cycles (dense → compressed)</th><td>7,300 → 2,300" in page
    for mime, data in images(page):
        assert_valid_image(mime, data)


def test_no_simulation_no_cycle_plot():
    for report in (compile_report(), bench_report()):
        page = render_html(report)
        assert "plot-cycles" not in page and "Simulated" not in page
