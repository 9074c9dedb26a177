"""The benchmark scripts run (tiny settings, no meaningful timings) and their bookkeeping is right.

Timings themselves are never asserted here; benchmarks/RESULTS.md holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_ops  # noqa: E402


def _run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_bench_ops_quick(tmp_path: Path) -> None:
    js, md = tmp_path / "ops.json", tmp_path / "ops.md"
    _run("bench_ops.py", "--quick", "--sizes", "9", "--scales", "2", "3", "--json", str(js), "--markdown", str(md))
    rows = json.loads(js.read_text())["rows"]
    assert [(r["channels"], r["scale"]) for r in rows] == [(1, 2), (1, 3), (3, 2), (3, 3)]
    for r in rows:
        # The fused op was checked against skimage before timing (on torch's bicubic, whose rounding
        # can reorder near-ties: a step of the 81-value reference at most), and the pair ratios
        # bracket the median.
        assert 0 <= r["max_abs_diff_vs_skimage"] < 0.2
        assert r["b_over_exact_min"] <= r["b_over_exact"] <= r["b_over_exact_max"]
        assert r["b_over_exact_best"] > 0
        assert r["b_over_exact"] > 0 and r["fused_exact_ms"] > 0
    table = md.read_text()
    assert "(b)/exact" in table and "smoke run, not a measurement" in table


def test_paired_ms_alternates() -> None:
    calls: list[str] = []
    f_ms, g_ms = bench_ops.paired_ms(lambda: calls.append("f"), lambda: calls.append("g"), 3)
    assert calls == ["f", "g"] * 4  # one warm-up pair, then three timed pairs in turn
    assert len(f_ms) == len(g_ms) == 3


def _row(c: int, size: int, scale: int, ratio: float) -> dict:
    return {
        "channels": c,
        "size": size,
        "scale": scale,
        "b_over_exact": ratio,
        "b_over_exact_min": ratio - 1,
        "b_over_exact_max": ratio + 1,
        "b_over_exact_best": ratio + 0.5,
    }


def test_cpu_goal_line() -> None:
    rows = [_row(1, 256, 4, 9.0), _row(3, 256, 4, 5.5), _row(3, 512, 4, 1.0)]
    (line,) = bench_ops.goals(rows, "cpu")
    assert "5.5x" in line and "PASS" in line and "4.5x to 6.5x" in line and "best times 6.0x" in line
    (line,) = bench_ops.goals([_row(3, 256, 4, 4.9)], "cpu")
    assert "FAIL" in line
    assert bench_ops.goals([_row(3, 512, 4, 9.0)], "cpu") == []


def test_gpu_goal_lines() -> None:
    base = {"channels": 3, "size": 1024, "scale": 4, "floor_ms": 1.0, "fused_binned_ms": 1.5}
    rows = [
        {**base, "out_mb": 201.3, "binned_over_floor": 1.5, "a_over_binned": 30.0},
        {**base, "out_mb": 50.3, "binned_over_floor": 9.0, "a_over_binned": 1.0},  # under 100 MB: no goal
        {**base, "out_mb": 805.3, "binned_over_floor": 2.5, "a_over_binned": 20.0},
    ]
    rows[0].update(binned_b2b_ms=1.25, b2b_over_floor=1.25, binned_smooth_ms=1.125)
    lines = bench_ops.goals(rows, "cuda")
    assert len(lines) == 2
    assert lines[0].count("PASS") == 2
    assert lines[1].count("FAIL") == 2
    assert "back to back 1.250 ms/call = 1.25x floor; smooth image 1.125 ms" in lines[0]
    assert "back to back" not in lines[1]  # rows from before those columns existed


def test_update_results_replaces_only_its_device(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# Benchmark results\n\n## Other\n\nkeep me\n\n"
        f"{bench_ops.SECTION}\n\nintro stays\n\n### CPU: old\n\nold cpu table\n\n### CUDA: H100\n\ngpu table\n\n"
        "## Later section\n\nkeep me too\n"
    )
    bench_ops.update_results(path, "### CPU: old\n\nnew cpu table\n")
    text = path.read_text()
    assert "new cpu table" in text and "old cpu table" not in text
    assert "gpu table" in text and "intro stays" in text and "keep me\n" in text and "keep me too" in text
    assert text.index("### CPU: old") < text.index("### CUDA: H100") < text.index("## Later section")
    # A device seen for the first time is added at the end of the section, before the next one.
    bench_ops.update_results(path, "### CUDA: H200\n\nh200 table\n")
    text = path.read_text()
    assert text.index("gpu table") < text.index("h200 table") < text.index("## Later section")
    # No section yet: one is appended.
    fresh = tmp_path / "fresh.md"
    bench_ops.update_results(fresh, "### CPU: x\n\nt\n")
    assert bench_ops.SECTION in fresh.read_text() and "\nt\n" in fresh.read_text()


def test_bench_upscale_runs(tmp_path: Path) -> None:
    js = tmp_path / "up.json"
    _run("bench_upscale.py", "--size", "24", "--repeats", "1", "--json", str(js))
    assert json.loads(js.read_text())


def test_bench_cli_runs(tmp_path: Path) -> None:
    js = tmp_path / "cli.json"
    _run("bench_cli.py", "--planes", "3", "--size", "40", "--scale", "2", "--json", str(js))
    rows = json.loads(js.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["streamed", "memory"]
    assert all(r["seconds"] > 0 and r["peak_anon_mib"] > 0 for r in rows)


def test_bench_stylize_quick(tmp_path: Path) -> None:
    js = tmp_path / "st.json"
    _run("bench_stylize.py", "--quick", "--json", str(js))
    assert json.loads(js.read_text())


def test_bench_train_runs(tmp_path: Path, shared_dir: Path) -> None:
    js = tmp_path / "train.json"
    _run(
        "bench_train.py",
        "--device",
        "cpu",
        "--iterations",
        "1",
        "--rows",
        "pixel",
        "--shared",
        str(shared_dir),
        "--json",
        str(js),
    )
    (row,) = json.loads(js.read_text())["rows"]
    assert row["row"] == "pixel" and row["it_per_s"] > 0


def test_scatter_prefetch_compiles_and_agrees(tmp_path: Path) -> None:
    """The C++ prefetch microbenchmark builds and every prefetch distance writes the same result."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux (madvise huge pages) and a C++ compiler")
    exe = tmp_path / "scatter_prefetch"
    src = ROOT / "benchmarks" / "scatter_prefetch.cpp"
    subprocess.run([cxx, "-O2", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=300)
    done = subprocess.run([str(exe), "5000", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "results identical across distances: yes" in done.stdout
    assert subprocess.run([str(exe), "10"], capture_output=True, timeout=60).returncode == 2  # n too small


def test_profile_ops_quick(tmp_path: Path) -> None:
    md = tmp_path / "profile.md"
    _run("profile_ops.py", "--device", "cpu", "--quick", "--calls", "1", "--markdown", str(md))
    text = md.read_text()
    assert text.count("## 1x16^2 x2") == 2 and "binned 1024" in text and "exact" in text


def test_tune_cuda_quick(tmp_path: Path) -> None:
    md = tmp_path / "tune.md"
    _run("tune_cuda.py", "--device", "cpu", "--quick", "--markdown", str(md))
    text = md.read_text()
    assert "PSR_CUDA_TILE_ROWS" in text and "PSR_CUDA_PLANAR_MAX_PIXELS" in text
    assert text.count("| 1x16^2 x2") == 1 and text.count("| 3x16^2 x2") == 1
    assert "by PSR_CUDA_MAP_MIN_BLOCKS" in text and text.count(", residual |") == 1  # with and without


def test_tune_sweep_sets_each_value_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    import tune_cuda

    monkeypatch.setenv("PSR_TEST_KNOB", "7")
    seen = []
    ms = tune_cuda.sweep(
        "PSR_TEST_KNOB", ["auto", "2", "5"], lambda: seen.append(os.environ.get("PSR_TEST_KNOB")), "cpu", 2
    )
    assert seen == [None, "2", "5"] * 3  # a warm-up round, then 2 timed rounds, values in turns
    assert set(ms) == {"auto", "2", "5"} and all(t >= 0 for t in ms.values())
    assert "PSR_TEST_KNOB" not in os.environ  # unset afterwards ("auto" is the unset default)


def test_compare_checkouts_quick() -> None:
    out = _run("compare_checkouts.py", str(ROOT), "--rounds", "1", "--quick").stdout
    assert f"| case (ms) | {ROOT} |" in out
    for case in ("binned 1x16^2 x2", "exact 1x16^2 x2", "host 16^2"):
        assert f"| {case} | " in out, out


SASS = """
\t\tFunction : _Z11hist_kernelIfNS0_13BicubicSourceIfLb0EEEvv
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   FMUL R2, R3, UR4 ;                    /* 0x0000000403027c20 */
        /*0020*/               @P0 FFMA R2, R3, R4, R2 ;                 /* 0x0000000403027223 */
        /*0030*/                   F2I.TRUNC.NTZ R5, R2 ;                /* 0x0000000200057305 */
        /*0040*/              @!P1 BRA 0x10 ;                            /* 0x0000000000009947 */
        /*0050*/                   EXIT ;                                /* 0x000000000000794d */
\t\tFunction : _Z10map_kernelv
        /*0000*/                   EXIT ;                                /* 0x000000000000794d */
"""


def test_sass_loops_parses_listings() -> None:
    import sass_loops

    funcs = sass_loops.functions(SASS)
    assert list(funcs) == ["_Z11hist_kernelIfNS0_13BicubicSourceIfLb0EEEvv", "_Z10map_kernelv"]
    ins = funcs["_Z11hist_kernelIfNS0_13BicubicSourceIfLb0EEEvv"]
    assert [a for a, _ in ins] == [0, 0x10, 0x20, 0x30, 0x40, 0x50]
    assert [sass_loops.opcode(t) for _, t in ins] == ["MOV", "FMUL", "FFMA", "F2I", "BRA", "EXIT"]
    assert sass_loops.loops(ins) == [(1, 4)]  # the backward branch at 0x40 closes a loop from 0x10
    assert sass_loops.loops(funcs["_Z10map_kernelv"]) == []
