"""Build hook (configuration is in pyproject.toml): ship csrc/ inside the package as psr/_csrc.

In a checkout psr/_csrc is a symbolic link to ../csrc; where links are not checked out as links
(git's core.symlinks=false, the Windows default, or some archive exports) it is a small text file
and the package-data globs would find no sources, silently. This copies the C++/CUDA sources into
the built package from csrc/ (or from psr/_csrc in an sdist) and fails the build without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        src = next((d for d in (ROOT / "csrc", ROOT / "psr" / "_csrc") if (d / "psr.cpp").is_file()), None)
        if src is None:
            raise SystemExit("psr: the C++/CUDA sources (csrc/psr.cpp) are missing; a wheel without them cannot build")
        dst = Path(self.build_lib) / "psr" / "_csrc"
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.suffix in SUFFIXES:
                out = dst / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


setup(cmdclass={"build_py": BuildPyWithSources})
