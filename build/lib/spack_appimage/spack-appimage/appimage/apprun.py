"""AppRun: the compiled dispatcher at the AppDir root, and its entry table.

The C source (``apprun/apprun.c``) is compiled once per source and compiler and cached
in Spack's user cache, so images need no compiler run after the first. It is linked
statically when the C library allows it (glibc's libc.a), so the AppRun of an image
does not itself limit which host glibc the image runs on.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .errors import ToolError

SOURCE = os.path.join(os.path.dirname(__file__), "apprun", "apprun.c")

#: Where AppRun reads its entries, relative to the AppDir.
TABLE = os.path.join(".appimage", "entries")


@dataclass(frozen=True)
class EntryPoint:
    name: str
    #: AppDir-relative path of the program
    path: str


def write_table(
    appdir: str, entries: Sequence[EntryPoint], default: Optional[str], bin_dirs: Sequence[str]
) -> None:
    lines = [f"entry\t{e.name}\t{e.path}" for e in entries]
    if default:
        lines.append(f"default\t{default}")
    lines += [f"path\t{d}" for d in bin_dirs]
    os.makedirs(os.path.join(appdir, os.path.dirname(TABLE)), exist_ok=True)
    with open(os.path.join(appdir, TABLE), "w") as f:
        f.write("\n".join(lines) + "\n")


def c_compiler() -> str:
    """The C compiler of the first compiler Spack knows, else ``cc`` from PATH."""
    import spack.compilers.config

    for compiler in spack.compilers.config.all_compilers(init_config=False):
        cc = (compiler.extra_attributes or {}).get("compilers", {}).get("c")
        if cc and os.access(cc, os.X_OK):
            return cc
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ToolError(
            "no C compiler found to build AppRun",
            "register one with `spack compiler find`, or install gcc",
        )
    return cc


def _compiler_identity(cc: str) -> bytes:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolError(f"the C compiler {cc} does not run: {e}") from e


def build(cache_dir: str, cc: Optional[str] = None) -> str:
    """Path of a compiled AppRun, building it into ``cache_dir`` if needed."""
    cc = cc or c_compiler()
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + cc.encode() + _compiler_identity(cc)).hexdigest()[:16]
    cached = os.path.join(cache_dir, f"apprun-{key}")
    if os.path.exists(cached):
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".apprun-")
    os.close(fd)
    try:
        errors = _compile(cc, tmp)
        if errors is not None:
            raise ToolError(f"could not compile AppRun with {cc}", errors)
        os.chmod(tmp, 0o755)
        os.replace(tmp, cached)  # atomic: concurrent builds leave one good file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cached


def _compile(cc: str, output: str) -> Optional[str]:
    """Compile statically, else dynamically; None on success, else the compiler's errors."""
    flags: List[List[str]] = [["-static"], []]
    result = None
    for extra in flags:
        result = subprocess.run(
            [cc, "-O2", "-Wall", *extra, "-o", output, SOURCE], capture_output=True, text=True
        )
        if result.returncode == 0:
            return None
    return result.stderr.strip()
