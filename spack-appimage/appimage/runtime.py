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

from . import installed, prerequisites, toolchain
from .assemble import stamp_magic
from .errors import ToolError

#: The runtime's C files (one concern each) and headers.
SOURCES = toolchain.sources_of(os.path.join(os.path.dirname(__file__), "runtime"))

#: Needed; pkg-config module names.
REQUIRED = ("squashfuse_ll", "squashfuse", "fuse3", "zlib")  # zlib: verify.c's crc32
#: Linked when present: what squashfuse may have been built with.
COMPRESSION = ("libzstd", "liblzma", "liblz4", "lzo2")

#: The section `spack appimage` fills with "<image id> <unpacked bytes> <metadata CRC>
#: <squashfs CRC>" (assemble.stamp_image_id; read by runtime.c's open_image, the CRCs
#: checked by runtime/verify.c; an image without them is walked by runtime/walk.c).
ID_SECTION = ".spack_appimage_id"

def _missing() -> str:
    return f"install them: {prerequisites.install_command('runtime-libraries')}"


def _spack_pkg_config_path() -> List[str]:
    import spack.traverse
    from spack.version import Version

    roots = installed.named("squashfuse")[:1]
    roots += [s for s in installed.named("libfuse") if s.version >= Version("3")][:1]
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
            _missing(),
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
            raise ToolError(f"the static library lib{name}.a is missing", _missing())
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
    if not shutil.which("pkg-config"):
        raise ToolError("pkg-config is needed to find squashfuse and libfuse 3 for the runtime",
                        f"install it: {prerequisites.install_command('pkg-config')}, or "
                        "pre-build the runtime (README, 'Runtimes')")
    extra = _spack_pkg_config_path()
    cflags, archives = _pkg_config(list(REQUIRED) + _available(COMPRESSION, extra), extra)
    link = ["-Wl,--start-group", *archives, "-Wl,--end-group", "-lpthread", "-ldl"]
    args = ["-O2", "-static", *cflags, *link]
    return toolchain.compile_cached("runtime", SOURCES, [args], key_inputs=archives,
                                    finish=_finish)
