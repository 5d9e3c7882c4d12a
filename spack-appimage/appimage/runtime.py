"""The project's AppImage runtime, compiled from ``runtime/*.c`` on first use.

It links squashfuse (low-level ops) and libfuse 3 statically, with the compression
libraries squashfuse was built with, so at run time it needs only the kernel, glibc's
system calls and a ``fusermount3``/``fusermount`` (or root). The libraries are found with
pkg-config, looking first in the prefixes of installed Spack specs ``squashfuse`` and
``libfuse`` (and their dependencies), then in the system's pkg-config path. The result
is cached (``toolchain``) by source, compiler and the static libraries' content.

After linking: ``strip`` (so the section header table is the last thing in the file and
the squashfs can start right after it), then ``AI\\x02`` at offset 8, then the digest of
its sources, which tells a site's pre-built runtime (``config:appimage:runtime``) from a
current one; an image's copy also says which spack-appimage made the image, for
``--appimage-version``.
"""

import functools
import hashlib
import os
import re
import shutil
import subprocess
from typing import List, Optional, Tuple

from elftools.elf.elffile import ELFFile

from . import installed, prerequisites, toolchain, version
from .assemble import check_runtime, fill_section, section, stamp_magic
from .compat import tty
from .errors import OutputError, ToolError

#: AppRun's CPU check (apprun/cpu.c, cpuid.c), which --appimage-doctor shows as well: compiled into
#: both programs so that the comparison has one copy.
_SHARED_DIR = os.path.join(os.path.dirname(__file__), "apprun")
#: The runtime's C files (one concern each) and headers.
SOURCES = toolchain.sources_of(os.path.join(os.path.dirname(__file__), "runtime")) + [
    os.path.join(_SHARED_DIR, name) for name in ("cpu.c", "cpuid.c", "cpu.h")]

#: Needed; pkg-config module names.
REQUIRED = ("squashfuse_ll", "squashfuse", "fuse3", "zlib")  # zlib: verify.c's crc32
#: Linked when present: what squashfuse may have been built with.
COMPRESSION = ("libzstd", "liblzma", "liblz4", "lzo2")

#: The section `spack appimage` fills with "<image id> <unpacked bytes> <metadata CRC>
#: <squashfs CRC>" (assemble.stamp_image_id; read by runtime.c's open_image, the CRCs
#: checked by runtime/verify.c; an image without them is walked by runtime/walk.c).
ID_SECTION = ".spack_appimage_id"

#: The section that says what compiled the runtime (runtime.c's runtime_build, printed by
#: ``--appimage-version``): the source digest at compile time (:func:`_finish`), then in
#: an image's copy :func:`build_line` (:func:`stamp_build`).
BUILD_SECTION = ".spack_appimage_build"

#: How site admins pre-build the runtime at PATH (README, 'Runtimes').
PREBUILD = 'install -m 0755 "$(spack appimage --print-runtime)" {path}'

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


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """The runtime's identity: 16 hex digits of the SHA-256 of its sources (names and
    content). The compile cache is keyed by the same content (plus compiler and
    libraries), so a new commit that leaves ``runtime/`` alone reuses the cached runtime,
    and a pre-built runtime is stale exactly when this differs from the one it carries."""
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


def build_line(carried: Optional[str] = None) -> str:
    """What ``--appimage-version`` of an image made now prints: the extension's version
    and commit (:mod:`version`), and the sources its runtime was compiled from
    (``carried``, the digest a runtime file carries: :func:`source_digest` by default)."""
    return f"{version.identity()}, runtime source {carried or source_digest()}"


#: The build section of a compiled runtime: the digest of its sources alone.
_CARRIED = re.compile(r"runtime source ([0-9a-f]+)$")


def carried_digest(path: str) -> Optional[str]:
    """The source digest the runtime at ``path`` carries; "" for one of ours compiled
    before runtimes carried it (an ID section, no digest); None for another runtime."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        found = elf.get_section_by_name(BUILD_SECTION)
        if found is None:
            return "" if elf.get_section_by_name(ID_SECTION) is not None else None
        text = found.data().split(b"\0", 1)[0].decode("utf-8", "replace")
    match = _CARRIED.search(text)
    return match.group(1) if match else ""


def _write_build(target: str, runtime_file: str, line: str) -> None:
    """``line`` into the build section of the runtime at the start of ``target``."""
    where = section(runtime_file, BUILD_SECTION)
    data = line.encode()
    if len(data) >= where[1]:  # never: the section holds 256 bytes, the line about 90
        raise ToolError(f"the runtime's build line is longer than {where[1] - 1} bytes: "
                        f"{line}")
    fill_section(target, where, data)


def stamp_build(image: str, runtime_file: str) -> None:
    """Make the runtime at the start of ``image`` say what made the image
    (:func:`build_line`, with the digest ``runtime_file`` carries). Written at assembly,
    not at compile time: the compile is cached across commits, and an image's bytes must
    not depend on which commit filled a machine's cache. Other runtimes are left alone."""
    carried = carried_digest(runtime_file)
    if carried:
        _write_build(image, runtime_file, build_line(carried))


def _finish(path: str) -> None:
    strip = shutil.which("strip")
    if not strip:
        raise ToolError("strip (binutils) is needed to build the runtime", "install binutils")
    subprocess.run([strip, path], check=True)
    stamp_magic(path)
    _write_build(path, path, f"runtime source {source_digest()}")


def check_configured(path: str, where: str) -> None:
    """The pre-built runtime ``path`` of a setting (``where`` names it and its file):
    one error naming the setting when it is not a type-2 runtime, one warning line with
    the command that rebuilds it when it is ours but from other sources than these."""
    rebuild = PREBUILD.format(path=path)
    try:
        check_runtime(path)  # a readable ELF file, so carried_digest can read it
    except OutputError as e:
        raise OutputError(f"{where}: {e.cause}",
                          f"pre-build the runtime there: {rebuild}, or remove the setting") from e
    carried = carried_digest(path)
    if carried is not None and carried != source_digest():
        says = f"runtime source {carried}" if carried else "nothing: built before runtimes " \
            "recorded it"
        tty.warn(f"{where}: {path} was built from other runtime sources than this "
                 f"spack-appimage's (it says '{says}'; these: 'runtime source "
                 f"{source_digest()}'); rebuild it: {rebuild}")


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
