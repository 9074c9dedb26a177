"""Just-in-time build and loading of psr's compiled ops (``csrc/``: ``torch.ops.psr.*``).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` and ninja into
``<torch extensions dir>/psr_ops_<fingerprint>``; the fingerprint hashes the sources, the flags,
torch's and Python's versions and the CPU, so a source change builds a fresh directory and a
process never overwrites a library another process has loaded. Later processes load the built
library directly (``torch.ops.load_library``) without importing ``torch.utils.cpp_extension``.
After a build, builds of other source versions are pruned: the few most recently used are kept,
none unused for two weeks (:func:`prune_builds`).

Two processes building at once serialise on an ``fcntl`` lock that the kernel releases if its
holder dies; a failed build leaves ``failed.txt`` in the build directory so later processes fall
back at once instead of recompiling (``psr build-ext`` retries). Without a compiler or ninja, or
when the build fails, the pure-torch reference runs and says so once per process.

Environment:

* ``PSR_FORCE_REFERENCE=1``: never load the extension (``psr.ops.backend() == "reference"``).
* ``PSR_BUILD_VERBOSE=1``: show the compiler's output.
* ``PSR_BUILD_CUDA=0``: build the CPU kernels only, even where CUDA is available.
* ``TORCH_EXTENSIONS_DIR``, ``MAX_JOBS``, ``CXX``, ``CUDA_HOME``: as for ``torch.utils.cpp_extension``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ._env import env_flag

__all__ = [
    "ExtensionFallbackWarning",
    "build",
    "build_extension",
    "cuda_home",
    "cuda_nvcc_flags",
    "extension_info",
    "force_reference",
    "has_cuda_kernels",
    "load_extension",
    "source_dir",
]

NAME = "psr_ops"
_log = logging.getLogger(__name__)
ENV_FORCE = "PSR_FORCE_REFERENCE"
ENV_VERBOSE = "PSR_BUILD_VERBOSE"
ENV_CUDA = "PSR_BUILD_CUDA"

# -ffp-contract=off keeps the matching arithmetic bit-identical to numpy's (no fused multiply-add);
# -march=native is safe because the build happens on the machine that runs it (the CPU's flags are
# part of the fingerprint, so a shared cache directory never serves a foreign build).
_CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
_LD_FLAGS = ["-fopenmp"]
# --fmad=false: the same for the device code; the bicubic sums use explicit fma() calls instead.
_NVCC_FLAGS = ["-O3", "--fmad=false"]


def _process_libstdcxx() -> str | None:
    """Path of the libstdc++ this process has loaded (torch's), on Linux; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and os.path.basename(fields[5]).startswith("libstdc++.so"):
            path = fields[5]
            # A file replaced on disk since it was mapped, or a path the link line cannot carry
            # (torch's ninja file does not quote it): leave the linking to the compiler.
            if path.endswith(" (deleted)") or any(ch.isspace() for ch in path) or not os.path.isfile(path):
                return None
            return path
    return None


def _ld_flags() -> list[str]:
    """Link flags: OpenMP, and the C++ runtime this process already runs, by path.

    Some toolchains link libstdc++ statically into shared objects (seen on the lent GPU machine:
    its /opt/gcc g++). The extension then carries a second C++ runtime beside torch's, one whose
    iostreams were never set up, and a kernel's TORCH_CHECK message with a number in it segfaulted
    (in std::ostream::_M_insert<long>, torch 2.11). Naming torch's libstdc++ before the driver's
    own -lstdc++ resolves those symbols to the shared runtime; elsewhere it is the same library.
    """
    lib = _process_libstdcxx()
    return _LD_FLAGS + ([lib] if lib else [])


_lock = threading.Lock()
_state: dict[str, object] = {"loaded": None, "path": None, "cuda": False, "reason": None, "warned": False}


class ExtensionFallbackWarning(RuntimeWarning):
    """The compiled ops are unavailable and the pure-torch reference runs instead."""


def force_reference() -> bool:
    """Whether ``PSR_FORCE_REFERENCE`` asks for the pure-torch path."""
    return env_flag(ENV_FORCE)


def source_dir() -> Path:
    """The ``csrc`` directory: inside the installed package (``psr/_csrc``) or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_csrc", here.parent / "csrc"):
        if (cand / "psr.cpp").is_file():
            return cand
    raise FileNotFoundError(
        f"psr's C++ sources (csrc/psr.cpp) are not under {here / '_csrc'} or {here.parent / 'csrc'}"
    )


def _sources(src: Path, with_cuda: bool) -> list[Path]:
    files = [src / "psr.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((src / "cuda").glob("*.cu"))
    return files


def _headers(src: Path) -> list[Path]:
    return sorted(p for pat in ("*.h", "cpu/*.h", "cuda/*.cuh") for p in src.glob(pat))


def cuda_home() -> str | None:
    """The CUDA toolkit root (with ``bin/nvcc``): ``CUDA_HOME``/``CUDA_PATH``, /usr/local/cuda, or nvcc's.

    torch guesses ``dirname(dirname(which nvcc))``, which is wrong where ``nvcc`` on the PATH is a
    wrapper script (/usr/local/bin/nvcc here), so this looks at the usual places first.
    """
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parent.parent))
    for c in cands:
        if c and (Path(c) / "bin" / "nvcc").is_file() and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return c
    return None


def _want_cuda() -> bool:
    if not env_flag(ENV_CUDA, default=True):
        return False
    return bool(torch.version.cuda) and torch.cuda.is_available() and cuda_home() is not None


def _march_native() -> list[str]:
    return ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64") else []


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _cuda_archs() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    return ";".join(
        f"{a}.{b}" for a, b in sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    )


def _fingerprint(src: Path, with_cuda: bool, cxx_flags: list[str]) -> str:
    h = hashlib.sha256()
    for p in _sources(src, with_cuda) + _headers(src):
        h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() + b"\0")
    parts = [
        torch.__version__,
        sys.version,
        os.environ.get("CXX", ""),
        " ".join(cxx_flags + _ld_flags()),
        _cpu_signature(),
    ]
    if with_cuda:
        parts += [" ".join(_NVCC_FLAGS), _cuda_archs(), cuda_home() or ""]
    h.update("\0".join(parts).encode())
    return h.hexdigest()[:16]


def _build_root() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    # The same default as torch.utils.cpp_extension, computed without importing it.
    import torch._appdirs

    acc = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    return (
        Path(torch._appdirs.user_cache_dir(appname="torch_extensions")).resolve()
        / f"py{sys.version_info.major}{sys.version_info.minor}_{acc}"
    )


def _layout(with_cuda: bool) -> tuple[Path, Path, list[str]]:
    """(build directory, library path, C++ flags) for this machine and configuration."""
    src = source_dir()
    cxx_flags = _CXX_FLAGS + _march_native()
    build_dir = _build_root() / f"{NAME}_{_fingerprint(src, with_cuda, cxx_flags)}{'_cuda' if with_cuda else ''}"
    return build_dir, build_dir / f"{NAME}.so", cxx_flags


# Builds of other source versions (other checkouts, older releases) are kept while recently used:
# the newest few, and none unused for longer than this.
_KEEP_BUILDS = 4
_KEEP_DAYS = 14.0


def _touch(stamp: Path) -> None:
    """Record a use of a build (its ``ok`` stamp's mtime), for pruning; read-only caches are fine."""
    with contextlib.suppress(OSError):
        os.utime(stamp)


def prune_builds(current: Path, *, keep: int = _KEEP_BUILDS, max_age_days: float = _KEEP_DAYS) -> list[Path]:
    """Delete other ``psr_ops_*`` builds beside ``current``: all but the ``keep - 1`` most recently
    used ones, and any unused for ``max_age_days``. A build another process holds the lock of (it
    is compiling) is left alone; a process that has a deleted library loaded keeps its mapping.
    Returns the deleted directories."""
    root = current.parent
    others = []
    for d in root.glob(f"{NAME}_*"):
        if not d.is_dir() or d.resolve() == current.resolve():
            continue
        stamp = d / "ok"
        with contextlib.suppress(OSError):
            others.append(((stamp if stamp.is_file() else d).stat().st_mtime, d))
    others.sort(key=lambda t: t[0], reverse=True)
    now = time.time()
    removed = []
    for i, (used, d) in enumerate(others):
        if i < keep - 1 and now - used < max_age_days * 86400:
            continue
        lock = root / f"{d.name}.lock"
        try:
            import fcntl

            with open(lock, "a+") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # being built right now
                shutil.rmtree(d, ignore_errors=True)
            lock.unlink(missing_ok=True)
        except (ImportError, OSError):  # pragma: no cover - not POSIX, or a read-only cache
            continue
        removed.append(d)
    return removed


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, released by the kernel if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: ninja's own up-to-date checks only
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_cpp_extension_import() -> Iterator[None]:
    """Point torch at the right CUDA toolkit and silence its 'No CUDA runtime' warning at import."""
    home = cuda_home()
    old = os.environ.get("CUDA_HOME")
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    if home and not old:
        os.environ["CUDA_HOME"] = home
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if home and not old:
            os.environ.pop("CUDA_HOME", None)


def _missing_tools() -> str | None:
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx.split()[0]) is None and shutil.which("g++") is None:
        return f"no C++ compiler ({cxx!r} not found)"
    ninja = shutil.which("ninja")
    if ninja is None:
        try:
            import ninja as _ninja  # the PyPI package ships the binary

            ninja = str(Path(_ninja.BIN_DIR) / "ninja")
            os.environ["PATH"] = _ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            return "ninja is not installed (pip install ninja)"
    return None


def _build(build_dir: Path, lib: Path, cxx_flags: list[str], with_cuda: bool, verbose: bool) -> None:
    """Compile and load (the caller holds the build lock)."""
    src = source_dir()
    # A build killed while holding torch's own lock file leaves it behind; we hold ours, so no
    # other psr process is building here and a leftover one is stale.
    (build_dir / "lock").unlink(missing_ok=True)
    build_dir.mkdir(parents=True, exist_ok=True)  # older torch (2.11) does not create it itself
    with _quiet_cpp_extension_import():
        from torch.utils import cpp_extension

    t0 = time.monotonic()
    what = "CPU and CUDA" if with_cuda else "CPU"
    print(
        f"psr: compiling the {NAME} extension ({what} kernels) in {build_dir} (first use; about a minute) ...",
        file=sys.stderr,
        flush=True,
    )
    kwargs = {}
    arch_env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if with_cuda:
        kwargs["extra_cuda_cflags"] = list(_NVCC_FLAGS)
        # cpp_extension fixed its CUDA_HOME when first imported (maybe before us, with torch's guess).
        cpp_extension.CUDA_HOME = cuda_home()
        if not arch_env:
            # torch derives -gencode flags from this; PTX of the newest arch serves newer GPUs.
            os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_archs() + "+PTX"
    try:
        cpp_extension.load(
            name=NAME,
            sources=[str(p) for p in _sources(src, with_cuda)],
            extra_cflags=cxx_flags,
            extra_ldflags=_ld_flags(),
            extra_include_paths=[str(src)],
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=with_cuda,
            is_python_module=False,
            **kwargs,
        )
    finally:
        if with_cuda and not arch_env:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
    (build_dir / "ok").write_text(f"{lib.name}\n")
    (build_dir / "failed.txt").unlink(missing_ok=True)
    print(f"psr: built {lib} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def _register_fakes() -> None:
    from . import ops

    ops._register_fakes()


def _load(build: bool, force: bool, verbose: bool, with_cuda: bool) -> Path:
    """Load (building if needed) or raise; the caller holds ``_lock``."""
    if force_reference():
        raise RuntimeError(f"{ENV_FORCE} is set")
    build_dir, lib, cxx_flags = _layout(with_cuda)
    if _state["loaded"]:
        if force:
            raise RuntimeError(
                f"the extension is already loaded in this process from {_state['path']}; rebuild in a fresh process"
            )
        return Path(str(_state["path"]))
    stamp = build_dir / "ok"
    if not force and stamp.is_file() and lib.is_file():
        try:
            torch.ops.load_library(str(lib))
            _touch(stamp)
            return lib
        except OSError:  # a concurrent forced rebuild replaced it: take the slow path
            pass
    if not build:
        raise RuntimeError(f"not built yet (run `psr build-ext`): {lib}")
    missing = _missing_tools()
    if missing:
        raise RuntimeError(missing)
    failed = build_dir / "failed.txt"
    with _file_lock(build_dir.parent / f"{build_dir.name}.lock"):
        if force:
            stamp.unlink(missing_ok=True)
            lib.unlink(missing_ok=True)  # a process that mapped it keeps its copy
            failed.unlink(missing_ok=True)
            # The objects too, so that ninja recompiles every source rather than only relinking.
            for obj in (*build_dir.glob("*.o"), *build_dir.glob("*.cuda.o"), build_dir / ".ninja_log"):
                obj.unlink(missing_ok=True)
        if stamp.is_file() and lib.is_file():  # another process built it while we waited
            torch.ops.load_library(str(lib))
            return lib
        if failed.is_file():
            raise RuntimeError(f"an earlier build failed (log: {failed}); run `psr build-ext` to retry")
        try:
            _build(build_dir, lib, cxx_flags, with_cuda, verbose or env_flag(ENV_VERBOSE))
        except Exception as exc:  # an interrupted build (KeyboardInterrupt) is not recorded as failed
            build_dir.mkdir(parents=True, exist_ok=True)
            failed.write_text("".join(traceback.format_exception(exc)))
            raise RuntimeError(f"building the {NAME} extension failed: {exc}; log in {failed}") from exc
    try:
        for d in prune_builds(build_dir):
            _log.info("psr: removed the unused extension build %s", d)
    except OSError:  # pruning is housekeeping: never fail a build over it
        pass
    return lib


def _note_loaded(lib: Path) -> None:
    _state.update(loaded=True, path=lib, cuda=lib.parent.name.endswith("_cuda"), reason=None)
    _register_fakes()


def load_extension() -> bool:
    """Load the compiled ops, building them on first use; False (and one warning) if they are unavailable.

    Never raises: any failure selects the pure-torch reference, and the first one per process is
    reported as an :class:`ExtensionFallbackWarning` (none when ``PSR_FORCE_REFERENCE`` asks for it).
    """
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    with _lock:
        if _state["loaded"] is not None:
            return bool(_state["loaded"])
        if force_reference():
            _state.update(loaded=False, reason=f"{ENV_FORCE} is set")
            return False
        with_cuda = _want_cuda()
        try:
            lib = _load(build=True, force=False, verbose=False, with_cuda=with_cuda)
            problem = None
        except Exception as exc:  # noqa: BLE001 - any failure means: use the reference path
            lib, problem = None, str(exc)
            if with_cuda:  # the CPU kernels alone may still build
                try:
                    lib = _load(build=True, force=False, verbose=False, with_cuda=False)
                    problem = f"CUDA kernels unavailable ({exc}); CUDA tensors use the pure-torch reference"
                except Exception as exc2:  # noqa: BLE001
                    problem = f"{exc}; CPU-only build: {exc2}"
        if problem is not None and not _state["warned"]:
            _state["warned"] = True
            message = (
                problem if lib is not None else f"compiled ops unavailable ({problem}); using the pure-torch reference"
            )
            warnings.warn(f"psr: {message}", ExtensionFallbackWarning, stacklevel=3)
        if lib is None:
            _state.update(loaded=False, reason=problem)
            return False
        _note_loaded(lib)
        _state["reason"] = problem
        return True


def build_extension(*, force: bool = False, verbose: bool = False) -> Path:
    """Build (if needed) and load the extension; return the shared library's path.

    For ``psr build-ext``. Unlike :func:`load_extension` this raises ``RuntimeError`` with the
    reason when the extension cannot be built, and retries a build that failed earlier.

    Parameters
    ----------
    force : bool
        Recompile even if an up-to-date build exists (must run before the process loaded it).
    verbose : bool
        Show the compiler's output.
    """
    with _lock:
        if _state["loaded"] and not force:
            return Path(str(_state["path"]))
        if force_reference():
            raise RuntimeError(f"{ENV_FORCE} is set: unset it to build the extension")
        with_cuda = _want_cuda()
        if not force:
            # Retry a recorded failure: that is what asking to build means.
            build_dir, _, _ = _layout(with_cuda)
            (build_dir / "failed.txt").unlink(missing_ok=True)
        lib = _load(build=True, force=force, verbose=verbose, with_cuda=with_cuda)
        _note_loaded(lib)
        return lib


def build(*, force: bool = False, verbose: bool = False) -> Path:
    """``psr build-ext``: :func:`build_extension` (raises ``RuntimeError`` with the reason on failure)."""
    return build_extension(force=force, verbose=verbose)


def has_cuda_kernels() -> bool:
    """Whether the loaded extension includes the CUDA kernels (loads it if needed)."""
    return load_extension() and bool(_state["cuda"])


def extension_info() -> dict[str, object]:
    """Where the extension lives and why it is not in use, without building or loading it."""
    with_cuda = _want_cuda()
    build_dir, lib, _ = _layout(with_cuda)
    return {
        "loaded": _state["loaded"],
        "path": str(_state["path"] or lib),
        "built": (build_dir / "ok").is_file() and lib.is_file(),
        "cuda": with_cuda,
        "reason": _state["reason"],
        "force_reference": force_reference(),
    }


def cuda_nvcc_flags(archs: tuple[str, ...] = ("90",)) -> list[str]:
    """nvcc flags that compile ``csrc/cuda/*.cu`` to objects the way the JIT build does.

    Used by the compile-only test: ``-gencode`` gives SASS and PTX for each arch in ``archs``.
    """
    import sysconfig

    tdir = Path(torch.__file__).resolve().parent
    flags = [
        f"-I{tdir / 'include'}",
        f"-I{tdir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{source_dir()}",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
        f"-DTORCH_EXTENSION_NAME={NAME}",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-std=c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "-std=c++17",
        "--compiler-options",
        "-fPIC",
        *_NVCC_FLAGS,
    ]
    for a in archs:
        flags.append(f"-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]")
    return flags
