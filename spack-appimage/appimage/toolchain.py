"""Compiling the project's small C programs (AppRun, the runtime) once, and caching them.

The compiler is the C compiler of the first compiler Spack knows, else ``cc`` from PATH.
A program is cached in Spack's user cache under a key hashing its source, the compiler
(path and ``--version``) and the link inputs, so a changed library or compiler rebuilds
it and concurrent builds leave one good file (atomic rename).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Callable, List, Optional, Sequence

from . import prerequisites
from .compat import configured_c_compilers, tty
from .errors import ToolError


def cache_dir() -> str:
    import spack.paths

    return os.path.join(spack.paths.user_cache_path, "appimage")


def c_compiler() -> str:
    """The first C compiler of Spack's configuration that exists, else ``cc``.

    Read from the config rather than ``spack.compilers.config.all_compilers``: that one
    filters by the packages tagged ``compiler``, which builds the tag index of the whole
    builtin repository on a cold misc cache (measured: ~110 s on a 2-core machine) just
    to learn one path."""
    for cc in configured_c_compilers():
        if os.access(cc, os.X_OK):
            return cc
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ToolError(
            "no C compiler found to build AppRun and the runtime",
            f"install one ({prerequisites.install_command('cc')}) and register it with "
            "`spack compiler find`",
        )
    return cc


def _compiler_identity(cc: str) -> bytes:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolError(f"the C compiler {cc} does not run: {e}") from e


def sources_of(directory: str) -> List[str]:
    """The C files of a program that grows by concern, one file each (``*.c``, compiled
    together), and its headers (``*.h``, part of the cache key only), sorted so the key
    does not depend on the directory's order."""
    names = sorted(os.listdir(directory))
    return [os.path.join(directory, n) for n in names if n.endswith((".c", ".h"))]


def compile_cached(
    name: str,
    sources: Sequence[str],
    attempts: Sequence[Sequence[str]],
    key_inputs: Sequence[str] = (),
    finish: Optional[Callable[[str], None]] = None,
) -> str:
    """Path of ``name`` compiled from ``sources`` (C files and headers), from the cache
    or built now.

    ``attempts`` are argument lists tried in order (e.g. static, then dynamic); the first
    that links wins. ``key_inputs`` are files (libraries) whose content is part of the
    key. ``finish`` post-processes the linked file before it enters the cache."""
    cc = c_compiler()
    digest = hashlib.sha256()
    for path in [*sources, *key_inputs]:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(cc.encode() + _compiler_identity(cc) + repr(list(attempts)).encode())
    directory = cache_dir()
    cached = os.path.join(directory, f"{name}-{digest.hexdigest()[:16]}")
    if os.path.exists(cached):
        return cached
    tty.msg(f"compiling {name} with {cc} (once: it is cached in {directory})")
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-")
    os.close(fd)
    try:
        errors: List[str] = []
        compiled = [s for s in sources if s.endswith(".c")]
        # A header is found where it is listed (a file shared with another program's
        # directory); not part of the key, which has the header's content.
        includes = [f"-I{d}" for d in dict.fromkeys(
            os.path.dirname(s) for s in sources if s.endswith(".h"))]
        for args in attempts:
            result = subprocess.run([cc, "-o", tmp, *compiled, *includes, *args],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
            errors.append(result.stderr.strip())
        else:
            raise ToolError(f"could not compile {name} with {cc}", None, "\n".join(errors))
        if finish:
            finish(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cached
