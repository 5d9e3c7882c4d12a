"""AppRun: the compiled dispatcher at the AppDir root, and its entry table.

The C source (``apprun/*.c``) is compiled once per source and compiler and cached
(``toolchain``), so images need no compiler run after the first. It is linked statically
when the C library allows it (glibc's libc.a), so the AppRun of an image does not itself
limit which host glibc the image runs on.
"""

import os
import platform
import shutil
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from . import toolchain

#: AppRun's C files (one concern each) and headers.
SOURCES = toolchain.sources_of(os.path.join(os.path.dirname(__file__), "apprun"))

#: Where AppRun reads its entries, relative to the AppDir.
TABLE = os.path.join(".appimage", "entries")


@dataclass(frozen=True)
class EntryPoint:
    name: str
    #: AppDir-relative path of the program (or script)
    path: str
    #: AppDir-relative path of a script's bundled interpreter, and its shebang argument
    interpreter: Optional[str] = None
    interpreter_arg: Optional[str] = None

    @staticmethod
    def of(entry, layout) -> "EntryPoint":
        interpreter = layout.dest(entry.interpreter) if entry.interpreter else None
        return EntryPoint(entry.name, layout.dest(entry.path), interpreter,
                          entry.interpreter_arg)

    def line(self) -> str:
        fields = [self.name, self.path]
        if self.interpreter:
            fields += [self.interpreter] + ([self.interpreter_arg] if self.interpreter_arg else [])
        return "\t".join(["entry"] + fields)


def write_table(
    appdir: str,
    entries: Sequence[EntryPoint],
    default: Optional[str],
    bin_dirs: Sequence[str],
    glibc: Optional[str] = None,
    host_libs: Sequence[Tuple[str, str, str]] = (),
    run_environment: Sequence[Tuple[str, str, str, str]] = (),
    loader_dirs: Sequence[str] = (),
    cpu: Sequence[Tuple[str, ...]] = (),
    store: Sequence[Tuple[str, ...]] = (),
) -> None:
    """The table AppRun reads (format in apprun/apprun.c). ``host_libs`` are (entry,
    library, why) for the checks AppRun makes before running an entry, which look in
    ``loader_dirs`` after ld.so.cache; ``run_environment`` the (operation, variable,
    value, separator) it applies; ``cpu`` the ``cpu`` and ``cpu-level`` lines of the
    CPU the bundled specs need (:meth:`.cpu.Need.table_lines`), checked first."""
    lines = [e.line() for e in entries]
    if default:
        lines.append(f"default\t{default}")
    lines += [f"path\t{d}" for d in bin_dirs]
    if glibc:
        lines.append(f"glibc\t{glibc}")
    lines += ["\t".join(("host",) + requirement) for requirement in host_libs]
    lines += ["\t".join(("env",) + change) for change in run_environment]
    lines += [f"loader\t{d}" for d in loader_dirs]
    lines += ["\t".join(line) for line in cpu]
    lines += ["\t".join(line) for line in store]
    os.makedirs(os.path.join(appdir, os.path.dirname(TABLE)), exist_ok=True)
    with open(os.path.join(appdir, TABLE), "w") as f:
        f.write("\n".join(lines) + "\n")


def install(appdir: str, entries: Sequence, points: Sequence[EntryPoint], libraries, policy,
            default: Optional[str],
            run_environment: Sequence[Tuple[str, str, str, str]] = (),
            cpu_need=None, store_view=None):
    """AppRun and its table in ``appdir``: the entries, the bin directories put first in
    PATH, the glibc the bundled files need, each entry's host libraries (minus the
    glibc family, which every host has), the bundled specs' run environment, and the
    CPU they need (a :class:`.cpu.Need`, None when they run on any CPU of the family),
    and the prefixes of the store view (a :class:`.storeview.StoreView`)."""
    from .policy import loader_dirs

    bin_dirs = list(dict.fromkeys(os.path.dirname(p.path) for p in points))
    host_libs = [
        (entry.name, name, why)
        for entry in entries
        for name, why in sorted(
            libraries.host_requirements(os.path.realpath(entry.program)).items())
        if not policy.always_there(name)
    ]
    write_table(appdir, points, default, bin_dirs, libraries.glibc_requirement,
                host_libs, run_environment, loader_dirs(platform.machine()),
                cpu_need.table_lines() if cpu_need else (),
                store_view.table_lines() if store_view else ())
    target = os.path.join(appdir, "AppRun")
    shutil.copyfile(build(), target)
    os.chmod(target, 0o755)


def build() -> str:
    """Path of the compiled AppRun: static when glibc's libc.a is there, else dynamic."""
    return toolchain.compile_cached("apprun", SOURCES, [["-O2", "-static"], ["-O2"]])
