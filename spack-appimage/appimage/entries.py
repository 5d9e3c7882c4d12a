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
    SPEC/*           every program of the spec's bin/ (:mod:`.programs` says what counts)

A name that is not found is compared with the programs the environment offers ("did you
mean"), and a name that several specs offer suggests the spec named like it.
"""

import importlib
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import installed, programs
from .compat import tty
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


def _matching(request: str, constraint: str, specs: Sequence) -> List:
    """The specs among ``specs`` that satisfy the ``SPEC`` part of ``request``."""
    try:
        query = installed.spec_query(constraint)
    except ValueError as e:
        raise EntryError(f"--entry {request}: {constraint!r} is not a spec ({e})") from e
    if not constraint.strip():  # the empty spec would match every spec
        raise EntryError(f"--entry {request}: no spec given",
                         "name one, e.g. --entry 'NAME=SPEC' or --entry 'SPEC/*'")
    matches = installed.matching(specs, query)
    if not matches:
        raise EntryError(
            f"--entry {request}: no installed spec of the environment matches {constraint} "
            f"({installed.NOT_BY_VIRTUAL})",
            f"`{programs.list_command()}` lists its root specs and their programs",
        )
    return matches


def find(request: str, nodes: Sequence) -> Entry:
    """Resolve one ``--entry NAME[=SPEC]`` or ``PATH[=SPEC]`` against the environment's
    nodes."""
    target, _, constraint = request.partition("=")
    everywhere = [s for s in nodes if not s.external]
    candidates = _matching(request, constraint, everywhere) if constraint else everywhere
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
        # A link into another spec of the environment stands for that spec's program, as
        # in Spack's views: python-venv's bin/python3 is the python spec's interpreter.
        program = programs.owner(path, spec, nodes)
        if program is None:
            raise EntryError(
                f"--entry {request}: {path} leads outside the prefix of {spec.name}",
                "name a program that belongs to a spec of the environment",
            )
        entry = Entry(os.path.basename(rel_path), program.spec, program.path)
        if program.spec is spec:  # the file's own prefix names it, whatever links to it
            found[os.path.realpath(path)] = entry
        else:
            found.setdefault(os.path.realpath(path), entry)
    found = list(found.values())
    if not found:
        raise _not_found(request, rel_path, constraint, everywhere, nodes)
    if len(found) > 1:
        owners = ", ".join(sorted(label(e.spec) for e in found))
        likeliest = _likeliest(os.path.basename(rel_path), [e.spec for e in found])
        raise EntryError(
            f"--entry {request}: {rel_path} is in several specs: {owners}",
            f"say which with --entry {target}=SPEC, e.g. --entry {target}={likeliest}",
        )
    entry = found[0]
    if not programs.is_executable_file(entry.path):
        raise EntryError(
            f"--entry {request}: {entry.path} is not an executable file",
            "name a program, not a data file or directory",
        )
    return _with_interpreter(entry, request, nodes)


def _not_found(request: str, rel_path: str, constraint: str, specs: Sequence,
               nodes: Sequence) -> EntryError:
    """No spec (matching ``constraint``) has ``rel_path``: name the specs that have it
    if only the constraint is wrong, else the programs the name may be a typo of."""
    target = request.partition("=")[0]
    holders = [s for s in specs if constraint and os.path.lexists(os.path.join(s.prefix,
                                                                               rel_path))]
    if holders:
        return EntryError(
            f"--entry {request}: no {rel_path} in the environment's specs matching "
            f"{constraint}",
            f"it is in {', '.join(sorted(label(s) for s in holders))}: e.g. "
            f"--entry {target}={_likeliest(os.path.basename(rel_path), holders)}",
        )
    near = programs.close_matches(target, nodes) if "/" not in target else []
    return EntryError(
        f"--entry {request}: no {rel_path} in the environment's installed specs",
        (f"did you mean {' or '.join(near)}? " if near else "")
        + f"`{programs.list_command()}` lists the programs (build-only dependencies and "
        "externals offer none)",
    )


def _likeliest(name: str, specs: Sequence) -> str:
    """How to name, as ``=SPEC``, the spec of ``specs`` that a user asking for the program
    ``name`` most likely means: the one named like the program (``ai-hello`` for
    ``ai-hello``, ``python`` for ``python3``), else the first by name."""

    def unlikeliness(spec) -> tuple:
        alike = spec.name.startswith(name) or name.startswith(spec.name)
        return (spec.name != name, not alike, spec.name, spec.dag_hash())

    spec = min(specs, key=unlikeliness)
    namesakes = [s for s in specs if s.name == spec.name]
    return spec.name if len(namesakes) == 1 else f"/{spec.dag_hash(7)}"


def _every_program(request: str, nodes: Sequence) -> List[Entry]:
    """``--entry SPEC/*``: the programs of the one spec matching SPEC. A script that
    cannot run from an image (its interpreter is the host's, or missing) is left out
    with a warning: a package's bin/ often holds such a helper (``foo-config``), and the
    rest is still wanted."""
    constraint = request[: -len("/*")]
    matches = _matching(request, constraint, [s for s in nodes if not s.external])
    if len(matches) > 1:
        raise EntryError(
            f"--entry {request}: several specs match {constraint}: "
            + ", ".join(sorted(label(s) for s in matches)),
            f"name one by its hash, e.g. --entry '/{matches[0].dag_hash(7)}/*'",
        )
    spec = matches[0]
    found, refused = runnable(programs.of(spec, nodes), request, nodes)
    for error in refused.values():
        tty.warn(f"{error.message}; it is left out")
    if not found:
        raise EntryError(
            f"--entry {request}: {label(spec)} has no programs in bin/ that an image can run",
            f"`{programs.list_command()}` lists the programs of each root spec; name other "
            "files as --entry PATH=SPEC",
        )
    return found


def runnable(found: Sequence[programs.Program], request: str,
             nodes: Sequence) -> Tuple[List[Entry], Dict[str, EntryError]]:
    """The entries an image can run among ``found``, and by name why it cannot run each
    other one (a script whose interpreter is not in the environment)."""
    entries, refused = [], {}
    for program in found:
        try:
            entries.append(_with_interpreter(Entry(program.name, program.spec, program.path),
                                             f"{request} ({program.name})", nodes))
        except EntryError as e:
            refused[program.name] = e
    return entries, refused


def _with_interpreter(entry: Entry, request: str, nodes: Sequence) -> Entry:
    """A script entry whose interpreter is in a prefix of the environment runs with the
    bundled copy of that interpreter. A script of a host interpreter (``/bin/sh``) is
    refused here, with its reason, rather than by the closure, which starts from an ELF
    program ("not an ELF executable"): ``SPEC/*`` leaves such scripts out."""
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
    owners = [s for s in nodes if not s.external and programs.inside(interpreter, s.prefix)]
    if owners:
        return Entry(entry.name, entry.spec, entry.path, interpreter, argument)
    import spack.store

    if programs.inside(interpreter, spack.store.STORE.root):
        raise EntryError(
            f"--entry {request}: the interpreter {interpreter} of this script is not in the "
            "environment's link/run dependencies",
            f"add its package to the environment, or make it a run dependency of "
            f"{entry.spec.name}",
        )
    if not programs.is_executable_file(interpreter):
        raise EntryError(
            f"--entry {request}: the interpreter {interpreter} of this script is neither in "
            "the environment nor a program on this machine",
            f"add the package that provides it to the environment, or fix the #! line of "
            f"{entry.path}",
        )
    raise EntryError(
        f"--entry {request}: {entry.path} is a script of the host's {interpreter}, and an "
        "image runs ELF programs and scripts whose interpreter is in the environment",
        "name a compiled program, or a script whose #! names a program of the environment",
    )


def find_all(requests: Sequence[str], nodes: Sequence) -> List[Entry]:
    entries = [e for r in requests
               for e in (_every_program(r, nodes) if r.endswith("/*") else [find(r, nodes)])]
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


def show(env) -> None:
    """``--list-entries``: under each root spec of ``env``, the programs of its ``bin/``
    that ``--entry`` takes, as ``spack find`` prints specs. A name several specs offer
    is starred and its specs are named at the end (``--entry NAME`` needs ``=SPEC``);
    the programs an image cannot run are named apart (``--entry NAME`` says why)."""
    colify = importlib.import_module(tty.__name__ + ".colify").colify  # Spack 0.23 too
    nodes = link_run_nodes(env)
    shared = {name: found for name, found in programs.offered(nodes).items()
              if len(found) > 1}
    shown = set()
    for root in sorted(env.concrete_roots(), key=lambda s: (s.name, s.dag_hash())):
        tty.hline(label(root))
        found, refused = runnable([] if root.external else programs.of(root, nodes),
                                  label(root), nodes)
        shown.update(e.name for e in found)
        if found:
            colify([e.name + ("*" if e.name in shared else "") for e in found])
        if refused:
            print(f"(an image cannot run {', '.join(refused)}: --entry NAME says why)")
        if not found and not refused:
            print("(external: no entries)" if root.external else
                  "(no programs in bin/: name other files as --entry PATH=SPEC)")
    for name in sorted(shown & shared.keys()):
        tty.msg(f"*{name} is in {', '.join(sorted(label(p.spec) for p in shared[name]))}: "
                f"pick one with --entry {name}=SPEC")
