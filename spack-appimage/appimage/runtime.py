"""The project's AppImage runtime, compiled from ``runtime/*.c`` on first use.

It links squashfuse (low-level ops) and libfuse 3 statically, with the compression
libraries squashfuse was built with, so at run time it needs only the kernel, glibc's
system calls and a ``fusermount3``/``fusermount`` (or root). The libraries are found with
pkg-config, looking first in the prefixes of installed Spack specs ``squashfuse`` and
``libfuse`` (and their dependencies), then in the system's pkg-config path. The result
is cached (``toolchain``) by source, compiler and the static libraries' content.

After linking: ``strip`` (so the section header table is the last thing in the file and
the squashfs can start right after it), then ``AI\\x02`` at offset 8.
"""

import os
import re
import shutil
import subprocess
from typing import List, Tuple

from . import toolchain
from .assemble import stamp_magic
from .errors import ToolError

#: The runtime's C files (one concern each) and headers.
SOURCES = toolchain.sources_of(os.path.join(os.path.dirname(__file__), "runtime"))

#: Needed; pkg-config module names.
REQUIRED = ("squashfuse_ll", "squashfuse", "fuse3")
#: Linked when present: what squashfuse may have been built with.
COMPRESSION = ("libzstd", "zlib", "liblzma", "liblz4", "lzo2")

#: The section `spack appimage` fills with "<image id> <unpacked bytes>".
ID_SECTION = ".spack_appimage_id"

MISSING = (
    "install them with Spack (`spack install squashfuse libfuse@3`) or your distribution "
    "(Debian/Ubuntu: apt install libsquashfuse-dev libfuse3-dev libzstd-dev zlib1g-dev "
    "liblzma-dev liblz4-dev liblzo2-dev pkg-config)"
)


def _spack_pkg_config_path() -> List[str]:
    import spack.store
    import spack.traverse

    roots = []
    for name in ("squashfuse", "libfuse@3:"):
        try:
            roots += spack.store.STORE.db.query(name, installed=True)[:1]
        except Exception:  # an unreadable store must not hide the system's libraries
            pass
    dirs = []
    for spec in spack.traverse.traverse_nodes(roots, deptype=("link",)):
        for lib in ("lib", "lib64"):
            path = os.path.join(spec.prefix, lib, "pkgconfig")
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


def _pkg_config(modules, extra_path: List[str]) -> Tuple[List[str], List[str]]:
    """(cflags, static archives) of ``modules``."""
    pkg_config = shutil.which("pkg-config")
    if not pkg_config:
        raise ToolError("pkg-config is needed to find squashfuse and libfuse 3", MISSING)
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = ":".join(extra_path + [env.get("PKG_CONFIG_PATH", "")]).strip(":")
    result = subprocess.run(
        [pkg_config, "--static", "--cflags", "--libs", *modules],
        capture_output=True, text=True, env=env,
    )
    if result.returncode != 0:
        raise ToolError(
            "squashfuse and libfuse 3 are needed to build the runtime: "
            + (result.stderr.strip().splitlines() or ["not found"])[-1],
            MISSING,
        )
    flags = result.stdout.split()
    lib_dirs = [f[2:] for f in flags if f.startswith("-L")] + _default_lib_dirs()
    archives, cflags = [], [f for f in flags if f.startswith("-I") or f.startswith("-D")]
    for name in [f[2:] for f in flags if f.startswith("-l")]:
        if name in ("pthread", "dl", "rt", "m", "c"):
            continue
        archive = next((os.path.join(d, f"lib{name}.a") for d in lib_dirs
                        if os.path.exists(os.path.join(d, f"lib{name}.a"))), None)
        if not archive:
            raise ToolError(f"the static library lib{name}.a is missing", MISSING)
        if archive not in archives:
            archives.append(archive)
    return cflags, archives


def _default_lib_dirs() -> List[str]:
    """Where the compiler's linker looks for ``-lname`` by default."""
    out = subprocess.run([toolchain.c_compiler(), "-print-search-dirs"], capture_output=True,
                         text=True).stdout
    match = re.search(r"^libraries: =(.*)$", out, re.MULTILINE)
    return [os.path.normpath(d) for d in match.group(1).split(":")] if match else []


def _available(modules, extra_path: List[str]) -> List[str]:
    env = dict(os.environ, PKG_CONFIG_PATH=":".join(extra_path))
    return [m for m in modules
            if subprocess.run(["pkg-config", "--exists", m], env=env).returncode == 0]


def _finish(path: str) -> None:
    strip = shutil.which("strip")
    if not strip:
        raise ToolError("strip (binutils) is needed to build the runtime", "install binutils")
    subprocess.run([strip, path], check=True)
    stamp_magic(path)


def build() -> str:
    """Path of the compiled runtime (built on first use, then cached)."""
    extra = _spack_pkg_config_path()
    cflags, archives = _pkg_config(list(REQUIRED) + _available(COMPRESSION, extra), extra)
    link = ["-Wl,--start-group", *archives, "-Wl,--end-group", "-lpthread", "-ldl"]
    args = ["-O2", "-static", *cflags, *link]
    return toolchain.compile_cached("runtime", SOURCES, [args], key_inputs=archives,
                                    finish=_finish)
