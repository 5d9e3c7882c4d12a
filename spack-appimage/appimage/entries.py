"""Which programs of the environment the image runs.

``--entry NAME`` is looked up among the executables in ``bin/`` of the environment's
link/run nodes, traversed from its concrete roots. Build-only nodes (compilers, the
compiler wrapper, build tools) are never candidates, and neither are externals: their
prefix is the host's (``/usr``), not something to ship.

Forms of ``--entry``:
    NAME             bin/NAME of the one spec that has it
    NAME=SPEC        bin/NAME of the spec matching SPEC (``hello``, ``hello@1.0``, ``/abc1234``)
    PATH[=SPEC]      a prefix-relative path with a slash (``libexec/tool``); the entry is
                     named by its last component
"""

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .errors import EntryError, EnvironmentNotReady, label


@dataclass(frozen=True)
class Entry:
    name: str
    spec: object  # spack.spec.Spec
    #: absolute path in the install prefix (may be a symlink)
    path: str
    #: for a script whose interpreter is in the store: that interpreter (absolute path)
    interpreter: Optional[str] = None
    #: and the one optional argument of its shebang line
    interpreter_arg: Optional[str] = None

    @property
    def program(self) -> str:
        """The ELF file the loader starts: the interpreter of a script, else the entry."""
        return self.interpreter or self.path


#: The second line of pip's launcher for an interpreter whose path is too long for a
#: ``#!`` line (distlib's "exec shim"), after a first line ``#!/bin/sh``.
_PIP_SHIM = re.compile(rb"^'''exec' (\S+) \"\$0\" \"\$@\"$")


def read_shebang(path: str) -> Optional[Tuple[str, Optional[str]]]:
    """(interpreter, argument) of a script, seeing through Spack's sbang form (a first line
    ``#!/bin/sh <store>/bin/sbang`` and the real shebang on the second) and through pip's
    exec shim (console scripts of ``py-*`` packages in a deep store); None if ``path`` is
    not a script. Like the kernel, everything after the interpreter is one argument."""
    parsed = _parse_shebang(path)
    return parsed[:2] if parsed else None


def shebang_length(path: str) -> int:
    """Bytes of the lines :func:`read_shebang` reads (0 for a file that is no script):
    a script entry runs as its bundled interpreter with the script as argument (AppRun),
    so nothing reads the store paths in those lines."""
    parsed = _parse_shebang(path)
    return parsed[2] if parsed else 0


def _parse_shebang(path: str) -> Optional[Tuple[str, Optional[str], int]]:
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.startswith(b"#!"):
        return None
    lines = head.split(b"\n")
    used = len(lines[0]) + 1
    first = lines[0][2:].decode(errors="replace").strip()
    if first.split()[-1:] and os.path.basename(first.split()[-1]) == "sbang" and len(lines) > 1:
        first = lines[1].lstrip(b"#!").decode(errors="replace").strip()
        used += len(lines[1]) + 1
    shim = _PIP_SHIM.match(lines[1]) if len(lines) > 1 and first == "/bin/sh" else None
    if shim:
        return shim.group(1).decode(errors="replace"), None, used + len(lines[1]) + 1
    interpreter, _, argument = first.partition(" ")
    return interpreter, argument.strip() or None, used


def link_run_nodes(env) -> List:
    """The concrete link/run nodes of ``env``; errors if it is not concretized or installed."""
    import spack.deptypes as dt
    import spack.traverse

    roots = env.concrete_roots()
    if not roots:
        raise EnvironmentNotReady(
            f"environment {env.name} has no concrete specs",
            f"run `spack -e {env.name} concretize` and `spack -e {env.name} install`, or "
            "pass --install",
        )
    concretized = dict(env.concretized_specs())
    pending = [s for s in env.user_specs if s not in concretized]
    if pending:
        raise EnvironmentNotReady(
            f"environment {env.name} has specs that are not concretized: "
            + ", ".join(str(s) for s in pending),
            f"run `spack -e {env.name} concretize`, or pass --install",
        )
    nodes = list(
        spack.traverse.traverse_nodes(
            roots, deptype=dt.LINK | dt.RUN, key=spack.traverse.by_dag_hash
        )
    )
    missing = [s for s in nodes if not s.external and not s.installed]
    if missing:
        raise EnvironmentNotReady(
            "not installed: " + ", ".join(label(s) for s in missing),
            f"run `spack -e {env.name} install`, or pass --install",
        )
    return nodes


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _inside(path: str, prefix: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(prefix)
    return real == top or real.startswith(top + os.sep)


def find(request: str, nodes: Sequence) -> Entry:
    """Resolve one ``--entry`` argument against the environment's nodes."""
    import spack.spec

    target, _, constraint = request.partition("=")
    candidates = [s for s in nodes if not s.external]
    if constraint:
        try:
            query = spack.spec.Spec(constraint)
        except Exception as e:
            raise EntryError(f"--entry {request}: {constraint!r} is not a spec ({e})") from e
        candidates = [s for s in candidates if s.satisfies(query)]
        if not candidates:
            raise EntryError(
                f"--entry {request}: no installed spec of the environment matches {constraint}",
                "see `spack find` in the environment for its specs",
            )
    rel_path = os.path.normpath(target if "/" in target else os.path.join("bin", target))
    if not target or os.path.isabs(target) or rel_path.startswith(".."):
        raise EntryError(
            f"--entry {request}: {target!r} is not a name or a path inside a prefix",
            "give a program name such as `hello`, or a prefix-relative path such as "
            "`libexec/hello`",
        )
    found = {}  # real path -> entry: a program reached from several prefixes is one
    for spec in candidates:
        path = os.path.join(spec.prefix, rel_path)
        if not os.path.lexists(path):
            continue
        if _inside(path, spec.prefix):
            found[os.path.realpath(path)] = Entry(os.path.basename(rel_path), spec, path)
            continue
        # A link into another spec of the environment stands for that spec's program, as
        # in Spack's views: python-venv's bin/python3 is the python spec's interpreter.
        owner = next((s for s in nodes if not s.external and _inside(path, s.prefix)), None)
        if owner is None:
            raise EntryError(
                f"--entry {request}: {path} leads outside the prefix of {spec.name}",
                "name a program that belongs to a spec of the environment",
            )
        found.setdefault(os.path.realpath(path),
                         Entry(os.path.basename(rel_path), owner, os.path.realpath(path)))
    found = list(found.values())
    if not found:
        raise EntryError(
            f"--entry {request}: no {rel_path} in the environment's installed specs",
            "list the candidates with `ls $(spack -e ENV location -i SPEC)/bin`; entries of "
            "build-only dependencies and externals are not offered",
        )
    if len(found) > 1:
        found.sort(key=lambda e: (e.spec.name, e.spec.dag_hash()))
        owners = ", ".join(label(e.spec) for e in found)
        raise EntryError(
            f"--entry {request}: {rel_path} is in several specs: {owners}",
            f"say which with --entry {target}=SPEC, e.g. --entry {target}={found[0].spec.name}",
        )
    entry = found[0]
    if not _is_executable_file(entry.path):
        raise EntryError(
            f"--entry {request}: {entry.path} is not an executable file",
            "name a program, not a data file or directory",
        )
    return _with_interpreter(entry, request, nodes)


def _with_interpreter(entry: Entry, request: str, nodes: Sequence) -> Entry:
    """A script entry whose interpreter is in a prefix of the environment runs with the
    bundled copy of that interpreter; a host interpreter (``/bin/sh``) stays as it is."""
    from .elf import read_elf

    shebang = read_shebang(entry.path)
    if shebang is None:
        if read_elf(os.path.realpath(entry.path)) is None:
            raise EntryError(
                f"--entry {request}: {entry.path} is neither an ELF executable nor a script",
                "name a compiled program or a script with a #! line",
            )
        return entry
    interpreter, argument = shebang
    owners = [s for s in nodes if not s.external and _inside(interpreter, s.prefix)]
    if owners:
        return Entry(entry.name, entry.spec, entry.path, interpreter, argument)
    import spack.store

    if _inside(interpreter, spack.store.STORE.root):
        raise EntryError(
            f"--entry {request}: the interpreter {interpreter} of this script is not in the "
            "environment's link/run dependencies",
            f"add its package to the environment, or make it a run dependency of "
            f"{entry.spec.name}",
        )
    if not _is_executable_file(interpreter):
        raise EntryError(
            f"--entry {request}: the interpreter {interpreter} of this script is neither in "
            "the environment nor a program on this machine",
            f"add the package that provides it to the environment, or fix the #! line of "
            f"{entry.path}",
        )
    return entry


def find_all(requests: Sequence[str], nodes: Sequence) -> List[Entry]:
    entries = [find(r, nodes) for r in requests]
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EntryError(
            f"several entries are named {', '.join(duplicates)}",
            "an image dispatches on the name, so each entry needs its own",
        )
    for entry in entries:
        if any(c.isspace() for c in entry.name):
            raise EntryError(f"the entry name {entry.name!r} contains white space")
    return entries
