"""Every CUDA op and mode once on small odd-sized inputs, for compute-sanitizer (memcheck, racecheck).

Run by benchmarks/gpu_check.sh (step ``sanitize``) as
``PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python3
benchmarks/gpu_sanitize_ops.py`` (and ``--tool racecheck``);
the results are checked against the CPU kernels too, so a run that reads garbage fails here as well.
Rows of 300 input columns span several CUDA tiles; scales 1, 3 and 8; float32 and float64; one plane
and six (exact mode sorts float32 planes together); bins in the shared-memory and the global-memory
histogram paths (and reference bins in shared and global memory); a residual and a separate
reference; a given bin range.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from psr import ops


def both(name: str, op: Callable[..., torch.Tensor], *args: object, **kwargs: object) -> tuple:
    """(name, op on CUDA copies of the tensor arguments, op on the CPU originals)."""

    def cuda(v: object) -> object:
        return v.cuda() if isinstance(v, torch.Tensor) else v

    on_gpu = op(*map(cuda, args), **{k: cuda(v) for k, v in kwargs.items()})
    return name, on_gpu, op(*args, **kwargs)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    g = torch.Generator().manual_seed(0)
    bad = 0
    for dtype in (torch.float32, torch.float64):
        x = torch.rand((2, 3, 37, 300), generator=g, dtype=dtype)
        ref = torch.rand((2, 3, 11, 13), generator=g, dtype=dtype)
        res = torch.rand((2, 3, 111, 900), generator=g, dtype=dtype) * 0.1
        atol = 1e-5 if dtype == torch.float32 else 1e-12
        cases = [both(f"upsample_bicubic a={a}", ops.upsample_bicubic, x, 3, a=a) for a in (-0.75, -0.5)]
        # Scale 1 (a tile row stages 260 values with 256 threads) and 8, on a few rows.
        for s in (1, 8):
            cases.append(both(f"upsample_bicubic x{s}", ops.upsample_bicubic, x[:, :, :9], s))
            cases.append(both(f"upsample_match x{s} bins=64", ops.upsample_match, x[:, :, :9], s, bins=64))
        # Ties for the real CUB sorts: quantised values, two identical planes (their keys differ only
        # in the plane bits when float32 planes are sorted together), a plane of -0.0 and +0.0.
        xq = (x[:, :, :20, :50] * 4).round() / 4
        xq[1, 2] = xq[0, 2]
        xq[0, 0, :10] = -0.0
        xq[0, 0, 10:] = 0.0
        cases.append(both("match_histograms ties", ops.match_histograms, xq, ref))
        # One plane: exact mode's per-plane sort (several float32 planes are sorted together).
        cases.append(both("match_histograms 1 plane", ops.match_histograms, x[:1, :1], ref[:1, :1]))
        for bins in (None, 64, 9000):
            cases.append(both(f"match_histograms bins={bins}", ops.match_histograms, x, ref, bins=bins))
            cases.append(
                both(f"upsample_match bins={bins}", ops.upsample_match, x, 3, residual=res, reference=ref, bins=bins)
            )
        # Binned mode's given bin range (narrower than the data: values in the end bins), and the
        # fused op matched to its own input (the reference's range is then the input's).
        narrow = ops.plane_range(x) * torch.tensor([1.2, 0.7], dtype=dtype) + 0.05
        for bins in (64, 9000):
            cases.append(
                both(
                    f"match_histograms bins={bins} bin_range", ops.match_histograms, x, ref, bins=bins, bin_range=narrow
                )
            )
            cases.append(both(f"upsample_match bins={bins} self", ops.upsample_match, xq, 4, bins=bins))
        torch.cuda.synchronize()
        for name, got, want in cases:
            # upsample_match: CUDA's bicubic values may differ from the CPU's in the last bit, which
            # can move a value across a tie or a bin edge and shift the CDF by a count (a quantile
            # step, here up to ~1e-4). The tests compare it bit for bit on the same device.
            tol = 1e-3 if name.startswith("upsample_match") else atol
            err = (got.cpu() - want).abs().max().item()
            ok = err <= tol
            bad += not ok
            print(f"{dtype} {name}: max abs diff vs CPU {err:.3g} {'ok' if ok else 'FAIL'}")
    print("all ok" if bad == 0 else f"{bad} FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
