"""Make every staged ELF file find its libraries relative to itself, then audit.

Each object gets a DT_RPATH of ``$ORIGIN``-relative directories: one per directory its
own NEEDED libraries were staged in. DT_RPATH, not DT_RUNPATH, because RPATH is searched
before ``LD_LIBRARY_PATH``: a host environment that points at another library with the
same SONAME cannot change what a bundled program loads. Every object carries the paths
for its own NEEDED, so nothing depends on RPATH inheritance.

The rewrite is Spack's own: an in-place string update (``spack.util.elf``) when the file
already has a DT_RPATH at least as long as the new one, which is the common case since
store paths are long; patchelf (``--force-rpath``, from PATH or Spack's bootstrap) for
files with no RPATH, with a DT_RUNPATH, or with a shorter one.

The audit then reads the AppDir back and fails the build if any RPATH or RUNPATH still
names an absolute or cwd-relative directory or leaves the AppDir, any PT_INTERP points into
the store, or any NEEDED resolves neither inside the AppDir (Spack's
``ResolveSharedElfLibDepsVisitor``) nor to a host library of the policy.
"""

import os
from typing import Dict, List, Optional, Sequence

import spack.util.elf as elf

from . import prerequisites
from .closure import Closure
from .elf import read_elf
from .compat import ResolveSharedElfLibDepsVisitor, tty, visit_directory_tree
from .errors import AuditError, ClosureError, ToolError
from .policy import HostRule
from .layout import Layout

ORIGIN = "$ORIGIN"


def rpaths_for(closure: Closure, layout: Layout) -> Dict[str, List[str]]:
    """AppDir path of each staged ELF object -> its new RPATH entries."""
    result = {}
    for real_path in closure.paths():
        dest_dir = os.path.dirname(layout.dest(real_path))
        dirs = []
        for link in closure.links_of(real_path):
            if link.load_path is None:
                continue
            rel = os.path.relpath(os.path.dirname(layout.dest(link.load_path)), dest_dir)
            entry = ORIGIN if rel == "." else f"{ORIGIN}/{rel}"
            if entry not in dirs:
                dirs.append(entry)
        result[layout.dest(real_path)] = dirs
    return result


class Patchelf:
    """patchelf: PATH first, then Spack's bootstrap. Found before the first stage
    (:func:`find_patchelf`), so a build that cannot get it fails in seconds, and a
    bootstrap (minutes, and a page of Spack's output) is announced."""

    def __init__(self, exe):
        self._exe = exe

    def __call__(self, *args: str) -> None:
        self._exe(*args, output=str, error=str)


def find_patchelf() -> Patchelf:
    """patchelf from PATH when Spack's own check of its version passes; else Spack's
    bootstrap, announced. The PATH case stays outside Spack's bootstrap configuration:
    entering it looks up compilers, which on a fresh user cache builds the index of the
    whole package repository (124 s of silence measured, bench/first_build.py)."""
    import spack.bootstrap
    import spack.bootstrap.core
    import spack.util.executable

    fix = f"install it: {prerequisites.install_command('patchelf')}, and put it on PATH"
    on_path = spack.util.executable.which("patchelf")
    if on_path and spack.bootstrap.core.verify_patchelf(on_path):
        return Patchelf(on_path)
    why = "on PATH fails Spack's version check (0.13.1 or newer)" if on_path else \
        "is not on PATH"
    tty.msg(f"patchelf {why}: Spack bootstraps it (once; this can take minutes). To skip "
            f"that, {fix}")
    try:
        with spack.bootstrap.ensure_bootstrap_configuration():
            return Patchelf(spack.bootstrap.ensure_patchelf_in_path_or_raise())
    except RuntimeError as e:
        raise ToolError("patchelf is needed to rewrite RPATHs and could not be bootstrapped",
                        f"{fix} (Spack said: {str(e).splitlines()[0] if str(e) else e})") from e


def set_rpath(path: str, rpaths: List[str], patchelf: Patchelf) -> None:
    new = ":".join(rpaths).encode()
    with open(path, "rb+") as f:
        parsed = elf.parse_elf(f, dynamic_section=True)
        if rpaths and parsed.has_rpath and not parsed.is_runpath:
            offset = parsed.pt_dynamic_strtab_offset + parsed.rpath_strtab_offset
            action = elf.UpdateCStringAction(parsed.dt_rpath_str, new, offset)
            if action.inplace:
                action.apply(f)
                return
    if not rpaths:
        if parsed.has_rpath:
            elf.delete_rpath(path)
        return
    try:
        patchelf("--force-rpath", "--set-rpath", new.decode(), path)
    except Exception as e:  # ProcessError: patchelf refused the file
        raise ToolError(f"patchelf could not set the RPATH of {path}: {e}") from e


def relocate(appdir: str, rpaths: Dict[str, List[str]], patchelf: Patchelf) -> None:
    for dest, entries in sorted(rpaths.items()):
        set_rpath(os.path.join(appdir, dest), entries, patchelf)


def _origin_entries_problem(appdir: str, path: str, parsed) -> Optional[str]:
    kind = "RUNPATH" if parsed.is_runpath else "RPATH"
    origin = os.path.dirname(path)
    for entry in parsed.dt_rpath_str.decode(errors="replace").split(":"):
        if not entry:
            continue
        if not entry.startswith((ORIGIN, "${ORIGIN}")):
            return f"{kind} entry {entry} is not relative to $ORIGIN"
        expanded = os.path.realpath(entry.replace("${ORIGIN}", origin).replace(ORIGIN, origin))
        if not (expanded + os.sep).startswith(os.path.realpath(appdir) + os.sep):
            return f"{kind} entry {entry} leaves the AppDir"
    return None


def unresolved_needed(appdir: str, host_libraries: Sequence[str]) -> Dict[str, List[str]]:
    """AppDir-relative path -> the NEEDED entries of that ELF file that its own RPATH
    does not resolve to a loadable library, other than ``host_libraries`` (patterns).

    Spack's ``ResolveSharedElfLibDepsVisitor`` answers: a reading of the staged files
    independent of the closure that produced them. Spack < 1.0 lacks it; the same rule
    is then applied with the closure's ELF reader."""
    if ResolveSharedElfLibDepsVisitor is None:
        return unresolved_by_closure_reader(appdir, host_libraries)
    visitor = ResolveSharedElfLibDepsVisitor(list(host_libraries))
    visit_directory_tree(appdir, visitor)
    return {
        rel: [needed.decode(errors="replace") for needed in problem.unresolved]
        for rel, problem in visitor.problems.items()
        if problem.unresolved
    }


def unresolved_by_closure_reader(appdir: str, host_libraries: Sequence[str]):
    """:func:`unresolved_needed` without ``spack.verify_libraries``: each NEEDED must be
    a loadable ELF object in a directory of the file's own RPATH or RUNPATH."""
    host = HostRule("host", tuple(host_libraries))
    result = {}
    for root, _, files in os.walk(appdir):
        for name in files:
            path = os.path.join(root, name)
            obj = None if os.path.islink(path) else _readable_elf(path)
            if obj is None:
                continue
            dirs = [d.replace("${ORIGIN}", root).replace(ORIGIN, root)
                    for d in obj.rpath + (obj.runpath or ())]
            unresolved = [
                needed for needed in obj.needed
                if not host.matches(needed)
                and not any(_loads(obj, os.path.join(d, needed)) for d in dirs)
            ]
            if unresolved:
                result[os.path.relpath(path, appdir)] = unresolved
    return result


def _readable_elf(path: str):
    """The ELF object at ``path``, or None when it is not one Spack's visitor would read
    (not ELF, unparsable, unreadable): that visitor skips such files."""
    try:
        return read_elf(path)
    except (ClosureError, OSError):
        return None


def _loads(obj, path: str) -> bool:
    candidate = _readable_elf(path) if os.path.isfile(path) else None
    return candidate is not None and obj.can_load(candidate)


def audit(appdir: str, host_libraries: Sequence[str], store_roots: List[str]) -> None:
    """Raise :class:`AuditError` listing every problem in ``appdir``. NEEDED entries
    matching ``host_libraries`` (names or patterns) are the host's to provide."""
    problems = []
    for root, _, files in os.walk(appdir):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            try:
                with open(path, "rb") as f:
                    parsed = elf.parse_elf(f, interpreter=True, dynamic_section=True)
            except elf.ElfParsingError:
                continue
            rel = os.path.relpath(path, appdir)
            if parsed.has_rpath:
                problem = _origin_entries_problem(appdir, path, parsed)
                if problem:
                    problems.append(f"{rel}: {problem}")
            if parsed.has_pt_interp:
                interp = parsed.pt_interp_str.decode(errors="replace")
                if any(interp.startswith(r + os.sep) for r in store_roots):
                    problems.append(f"{rel}: PT_INTERP {interp} is in the Spack store")
            for needed in parsed.dt_needed_strs if parsed.has_needed else []:
                if b"/" in needed:
                    problems.append(f"{rel}: NEEDED {needed.decode(errors='replace')} is a path")

    for rel, unresolved in sorted(unresolved_needed(appdir, host_libraries).items()):
        for needed in unresolved:
            problems.append(f"{rel}: NEEDED {needed} is not in the AppDir")

    if problems:
        raise AuditError(
            f"the staged AppDir still depends on files outside it ({len(problems)} problems)",
            "this is a bug in spack-appimage: please report it with the AppDir kept by "
            "--keep-appdir DIR",
            "\n".join(problems[:50]),
        )
