"""The programs an environment offers as entries: what ``--list-entries`` shows and
``--entry SPEC/*`` takes (those of them an image can run: :func:`.entries.runnable`),
and what an unknown ``--entry`` is compared with.

A program is a file of a spec's ``bin/`` that the loader or the kernel can start: an
executable regular file (a link to one counts) that is ELF or a ``#!`` script, and that
belongs to a spec of the environment (a link into another spec stands for that spec's
program, as in Spack's views). Directories, dangling links, links out of the store,
files without the executable bit, and the libtool ``.la`` and other text files that
packages leave executable in ``bin/`` are not programs.
"""

import difflib
import os
from typing import Dict, List, NamedTuple, Optional, Sequence


#: The first bytes of a file the loader (ELF) or the kernel (``#!``) starts.
PROGRAM_MAGIC = (b"\x7fELF", b"#!")


class Program(NamedTuple):
    name: str
    #: the spec whose prefix holds the file (for a link into another spec: that spec)
    spec: object
    #: the file in the install prefix (a link's target when it leads into another spec)
    path: str


def inside(path: str, prefix: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(prefix)
    return real == top or real.startswith(top + os.sep)


def owner(path: str, spec, nodes: Sequence) -> Optional[Program]:
    """``path`` of ``spec``'s prefix as the program of the spec that holds it: ``spec``,
    or the node a link leads into; None for a link out of the environment."""
    name = os.path.basename(path)
    if inside(path, spec.prefix):
        return Program(name, spec, path)
    holder = next((s for s in nodes if not s.external and inside(path, s.prefix)), None)
    return Program(name, holder, os.path.realpath(path)) if holder else None


def is_executable_file(path: str) -> bool:
    """Whether ``path`` (after links) is a regular file this user may execute."""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def is_program(path: str) -> bool:
    """Whether ``path`` (after links) is an executable ELF file or ``#!`` script."""
    if not is_executable_file(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4).startswith(PROGRAM_MAGIC)
    except OSError:  # unreadable: not something this user can bundle
        return False


def of(spec, nodes: Sequence) -> List[Program]:
    """The programs of ``spec``'s ``bin/``, by name."""
    bin_dir = os.path.join(spec.prefix, "bin")
    try:
        names = sorted(os.listdir(bin_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [owner(os.path.join(bin_dir, n), spec, nodes) for n in names
             if is_program(os.path.join(bin_dir, n))]
    return [p for p in found if p is not None]


def offered(nodes: Sequence) -> Dict[str, List[Program]]:
    """Each program name of the environment's link/run nodes -> its distinct programs
    (one file reached from several prefixes is one program), as ``--entry NAME`` sees
    them: build-only nodes are not among ``nodes``, externals offer none."""
    by_name: Dict[str, Dict[str, Program]] = {}
    for spec in nodes:
        if not spec.external:
            for program in of(spec, nodes):
                by_name.setdefault(program.name, {}).setdefault(
                    os.path.realpath(program.path), program)
    return {name: list(programs.values()) for name, programs in by_name.items()}


def close_matches(name: str, nodes: Sequence) -> List[str]:
    """The program names that ``name`` may be a typo of, best first."""
    return difflib.get_close_matches(name, offered(nodes), n=3)


def list_command() -> str:
    """The command that lists the active environment's programs."""
    import spack.environment

    env = spack.environment.active_environment()
    return f"spack -e {env.name if env else 'ENV'} appimage --list-entries"

