"""Static instruction counts of the binned CUDA passes, without a GPU.

Compiles ``csrc/cuda/match_histograms.cu`` for sm_90 as the JIT build does (``nvcc``, the flags of
``psr._build.cuda_nvcc_flags``), disassembles it with ``cuobjdump -sass`` and, for the float32
histogram and map kernels over a bicubic source (with and without a residual), prints the
registers and stack per thread and the kernel's loops: their length in instructions and the most
frequent opcodes. A row loop has 5 shared loads for the horizontal pass and one ``F2I`` (a bin) per
output: S for the loops compiled for scales 2, 3, 4 and 8 (one of each per variant: float or
double binning, shared or global histogram or edges), 1 or 2 for the generic loop (S a run-time
value); ptxas may merge or split loops, so tell them apart in the listing. Its length over its
outputs is an upper bound of the
instructions per output (the slow path of the histogram's run test is in the loop body too; its
common path is read off the listing, ``--dump``). The staging loops are the short ones with an
``LDG`` and an ``STS``.

    python benchmarks/sass_loops.py            # the table
    python benchmarks/sass_loops.py --dump hist_f32 --at 0x22f0   # one loop's listing

Issue slots, not time: where the passes are issue-bound (Nsight Compute on an H200, RESULTS.md),
fewer instructions per output is what makes them faster; a GPU run must confirm it.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNELS = {  # name: a pattern of the mangled name
    "hist_f32": r"hist_kernelIfNS0_13BicubicSourceIfLb0",
    "hist_f32_residual": r"hist_kernelIfNS0_13BicubicSourceIfLb1",
    # the map kernels' default variant (capped at 4 blocks per SM since the eleventh session; before,
    # no variants), and the uncapped one (PSR_CUDA_MAP_MIN_BLOCKS=1)
    "map_f32": r"map_kernelIfNS0_13BicubicSourceIfLb0EE(ELi4|EEEv)",
    "map_f32_residual": r"map_kernelIfNS0_13BicubicSourceIfLb1EE(ELi4|EEEv)",
    "map_f32_uncapped": r"map_kernelIfNS0_13BicubicSourceIfLb0EEELi0E",
    "map_f64": r"map_kernelIdNS0_13BicubicSourceIdLb0EE(ELi0|EEEv)",
    "hist_f32_plain": r"hist_kernelIfNS0_11PlainSourceIf",
    "map_f32_plain": r"map_kernelIfNS0_11PlainSourceIfEE(Li4|EEv)",
}


def _tool(name: str) -> str:
    """A CUDA toolkit program: from the toolkit psr builds with (``psr._build.cuda_home``), else the
    PATH, else (cuobjdump, which a bare toolkit may lack) the copy triton's wheel ships."""
    from psr import _build

    home = _build.cuda_home()
    if home and (Path(home) / "bin" / name).is_file():
        return str(Path(home) / "bin" / name)
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        p = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
        if p.is_file():
            return str(p)
    sys.exit(f"{name} not found (set CUDA_HOME)")


def compile_object(out: Path) -> None:
    from psr import _build

    cmd = [_tool("nvcc"), "-c", str(_build.source_dir() / "cuda" / "match_histograms.cu"), "-o", str(out)]
    subprocess.run([*cmd, *_build.cuda_nvcc_flags(("90",))], check=True)


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    """Mangled name -> [(address, instruction)]."""
    out = {}
    for part in sass.split("Function : ")[1:]:
        name = part.split("\n", 1)[0].strip()
        ins = []
        for line in part.split("\n"):
            m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2).strip()))
        out[name] = ins
    return out


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def loops(ins: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) indices of the loops (backward branches)."""
    at = {a: i for i, (a, _) in enumerate(ins)}
    found = []
    for i, (a, text) in enumerate(ins):
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in at:
            found.append((at[int(m.group(1), 16)], i))
    return sorted(found)


def resources(obj: Path) -> dict[str, str]:
    text = subprocess.run([_tool("cuobjdump"), "-res-usage", str(obj)], capture_output=True, text=True).stdout
    out = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"Function (\S+):", line)
        if m and i + 1 < len(lines):
            reg = re.search(r"REG:(\d+)", lines[i + 1])
            stack = re.search(r"STACK:(\d+)", lines[i + 1])
            out[m.group(1)] = f"{reg.group(1) if reg else '?'} registers, {stack.group(1) if stack else '?'} B stack"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object", type=Path, help="an already compiled match_histograms.o (else compiled now, ~1 min)")
    ap.add_argument("--dump", choices=sorted(KERNELS), help="print one kernel's loop listing")
    ap.add_argument("--at", help="with --dump: the loop starting at this address (hex)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        obj = args.object
        if obj is None:
            obj = Path(tmp) / "match_histograms.o"
            compile_object(obj)
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", str(obj)], capture_output=True, text=True, check=True
        ).stdout
        res = resources(obj)
    funcs = functions(sass)
    for key, pat in KERNELS.items():
        if args.dump and key != args.dump:
            continue
        name = next((n for n in funcs if re.search(pat, n)), None)
        if name is None:
            print(f"{key}: not found")
            continue
        ins = funcs[name]
        print(f"{key}: {len(ins)} instructions, {res.get(name, '?')}")
        for s, e in loops(ins):
            body = ins[s : e + 1]
            ops = collections.Counter(opcode(t) for _, t in body)
            if not 40 <= len(body) <= 400:  # row loops, not the tile loops around them
                continue
            # a row loop: the horizontal pass's 5 shared loads per input row, a bin (F2I) per output
            n = ops["F2I"]
            row = n >= 1 and ops["LDS"] >= 5
            mark = f"  <- row loop, {n} outputs: <= {len(body) / n:.1f} per output" if row else ""
            print(f"  loop {ins[s][0]:#06x}: {len(body):4d} instr {dict(ops.most_common(10))}{mark}")
            if args.dump and (args.at is None or int(args.at, 16) == ins[s][0]):
                for a, t in body:
                    print(f"      {a:#06x}  {t}")


if __name__ == "__main__":
    main()
