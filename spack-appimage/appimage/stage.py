"""The AppDir: only the entries, the libraries they load and their specs' data files,
placed as :mod:`layout` says.

What is copied from a spec's prefix:
* entries and libraries in the closure, with the symlink chain through which the loader
  (or the user) reaches them, so SONAME links exist in the image;
* data files under ``share/`` and ``etc/``, minus :data:`EXCLUDED` (headers, static
  libraries, pkg-config and CMake files, man/info/doc) and minus ELF files, which enter the
  image only through the closure (an ELF file nothing loads would carry store RPATHs);
* never ``.spack/`` (build environment and logs, which can hold secrets);
* symlinks only when their target is inside a staged prefix: nothing is ever copied from
  outside the environment's specs through a link. Others are left out (``--dry-run`` lists
  them).

Copies get normalized modes (0755 if executable by anyone, else 0644): no setuid, setgid,
sticky or group/world-writable bits travel.
"""

import dataclasses
import fnmatch
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .errors import AppImageError, unreadable
from .layout import HOST_LABEL, Layout, Owner, owner_of_dest, resolve_parent

#: Directories of a prefix whose data files are bundled.
DATA_TREES = ("share", "etc")

#: Prefix-relative glob patterns never bundled as data (a directory match prunes it).
EXCLUDED = (
    ".spack",
    "include",
    "share/man",
    "share/info",
    "share/doc",
    "share/gtk-doc",
    "share/pkgconfig",
    "share/aclocal",
    "share/cmake",
    "lib*/pkgconfig",
    "lib*/cmake",
    "*.a",
    "*.la",
    "*.h",
    "*.hh",
    "*.hpp",
    "*.mod",
)

@dataclass(frozen=True)
class DataRules:
    """Which data files are bundled: :data:`EXCLUDED` and ``exclude`` (``--exclude``) leave
    files out; ``keep`` (``--keep``) brings them back. Prefix-relative globs; a directory
    that matches is left out whole."""

    exclude: Tuple[str, ...] = ()
    keep: Tuple[str, ...] = ()
    #: what interpreters never need at run time (:func:`interpreters.never_needed`)
    never_needed: Tuple[str, ...] = ()

    def with_never_needed(self, globs: Tuple[str, ...]) -> "DataRules":
        return dataclasses.replace(self, never_needed=globs)

    def leaves_out(self, path: str, prefix: str) -> bool:
        """Whether ``path`` (in ``prefix``) or a directory above it is left out."""
        rel_path = os.path.relpath(path, prefix)
        parts = rel_path.split(os.sep)
        return any(self.rule_for(os.sep.join(parts[:n])) for n in range(1, len(parts) + 1))

    def rule_for(self, rel_path: str) -> Optional[str]:
        """The rule that leaves ``rel_path`` out (for the dry-run report), or None."""
        if rel_path == ".spack" or rel_path.startswith(".spack" + os.sep):
            return ".spack"  # build logs and environment: never, whatever --keep says
        if any(fnmatch.fnmatchcase(rel_path, p) for p in self.keep):
            return None
        if any(p.startswith(rel_path + "/") for p in self.keep):
            return None  # a directory on the way to something kept
        return next((p for p in EXCLUDED + self.never_needed + self.exclude
                     if fnmatch.fnmatchcase(rel_path, p)), None)


#: Why an ELF file under a data directory is left out: only the closure brings ELF files.
ELF_OUTSIDE_CLOSURE = "ELF file nothing loads"

#: What a staged file is, for the report's bytes per spec.
BINARY, LIBRARY, DATA = "binaries", "libraries", "data"


@dataclass
class Plan:
    """What the AppDir will hold, before anything is written."""

    #: AppDir-relative path -> host file to copy
    files: Dict[str, str] = field(default_factory=dict)
    #: AppDir-relative path -> symlink target (relative)
    links: Dict[str, str] = field(default_factory=dict)
    #: AppDir-relative path -> BINARY, LIBRARY or DATA
    kinds: Dict[str, str] = field(default_factory=dict)
    #: host paths of symlinks left out, with the reason
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    #: host paths of data files (or whole directories) left out, with the rule
    excluded: List[Tuple[str, str]] = field(default_factory=list)

    def spec_labels(self) -> List[str]:
        """Labels of the specs with a file in the image (``opt/<label>``; not ``host``)."""
        return sorted({owner_of_dest(dest) for dest in self.files} - {HOST_LABEL})

    def size(self) -> int:
        """Bytes of the files to copy."""
        return sum(os.path.getsize(src) for src in self.files.values())

    def bytes_by_owner(self) -> Dict[str, Dict[str, int]]:
        """owner label -> kind -> bytes of the files to copy."""
        sizes: Dict[str, Dict[str, int]] = {}
        for dest, src in self.files.items():
            by_kind = sizes.setdefault(owner_of_dest(dest), {BINARY: 0, LIBRARY: 0, DATA: 0})
            by_kind[self.kinds[dest]] += os.path.getsize(src)
        return sizes


class Planner:
    def __init__(self, layout: Layout, rules: DataRules):
        self.layout = layout
        self.rules = rules
        self.plan = Plan()

    def add_chain(self, path: str, kind: str) -> str:
        """Stage ``path`` and every symlink hop to its file; return the file's AppDir path."""
        path = resolve_parent(path)
        for _ in range(40):  # the kernel's limit on symlink hops
            if not os.path.islink(path):
                dest = self.layout.dest(path)
                self.plan.files[dest] = path
                self.plan.kinds.setdefault(dest, kind)
                return dest
            target = resolve_parent(os.path.join(os.path.dirname(path), os.readlink(path)))
            dest = self.layout.dest(path)
            self.plan.links[dest] = os.path.relpath(
                self.layout.dest(target), os.path.dirname(dest)
            )
            path = target
        raise AppImageError(f"too many levels of symbolic links at {path}")

    def add_data(self, owner: Owner, staged_prefixes: Tuple[str, ...],
                 trees: Tuple[str, ...] = DATA_TREES) -> None:
        from .elf import read_elf

        for tree in trees:
            top = os.path.join(owner.prefix, tree)
            for root, dirs, files in os.walk(top):
                rel_root = os.path.relpath(root, owner.prefix)
                dirs[:] = sorted(d for d in dirs if not self._skip_link_or_excluded(
                    os.path.join(root, d), os.path.join(rel_root, d), staged_prefixes))
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if self._skip_link_or_excluded(path, os.path.join(rel_root, name),
                                                   staged_prefixes):
                        continue
                    try:
                        is_elf = read_elf(path) is not None
                    except PermissionError as e:
                        raise unreadable(path, e) from e
                    dest = self.layout.dest(path)
                    if not is_elf:
                        self.plan.files[dest] = path
                        self.plan.kinds[dest] = DATA
                    elif dest not in self.plan.files:  # not already staged by the closure
                        self.plan.excluded.append((path, ELF_OUTSIDE_CLOSURE))

    def _skip_link_or_excluded(self, path, rel_path, staged_prefixes) -> bool:
        """True to leave ``path`` out. A symlink that may stay is staged here."""
        rule = self.rules.rule_for(rel_path)
        if rule:
            self.plan.excluded.append((path, rule))
            return True
        if not os.path.islink(path):
            return False
        target = os.path.realpath(path)
        if not os.path.exists(target):
            self.plan.skipped.append((path, "broken symlink"))
        elif not any(target == p or target.startswith(p + os.sep) for p in staged_prefixes):
            self.plan.skipped.append((path, f"points outside the staged specs, to {target}"))
        else:
            dest = self.layout.dest(path)
            self.plan.links[dest] = os.path.relpath(
                self.layout.dest(target), os.path.dirname(dest)
            )
        return True


def materialize(plan: Plan, appdir: str) -> None:
    """Write ``plan`` into the (existing, empty) directory ``appdir``."""
    for dest, src in sorted(plan.files.items()):
        target = os.path.join(appdir, dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copyfile(src, target, follow_symlinks=True)
            mode = os.stat(src).st_mode
        except PermissionError as e:
            raise unreadable(src, e) from e
        os.chmod(target, 0o755 if mode & 0o111 else 0o644)
    for dest, link_target in sorted(plan.links.items()):
        target = os.path.join(appdir, dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(link_target, target)


def plan(
    entries: Iterable, closure, layout: Layout, included: Iterable[str] = (),
    rules: DataRules = DataRules(), trees: Optional[Dict] = None,
) -> Plan:
    """The AppDir for ``entries`` and their ``closure``: programs, libraries through
    their load paths, ``included`` files, then the data files of every spec that
    contributed one, and the ``trees`` (spec -> prefix-relative directories: an
    interpreter's library, an extension's modules) of specs that may contribute nothing
    else, filtered by ``rules``."""
    planner = Planner(layout, rules)
    for entry in entries:
        planner.add_chain(entry.path, BINARY)
        if entry.interpreter:
            planner.add_chain(entry.interpreter, BINARY)
    for real_path in closure.libraries():
        for load_path in closure.load_paths_of(real_path):
            planner.add_chain(load_path, LIBRARY)
    programs = set(closure.entries)
    for path in included:
        real = os.path.realpath(path)
        planner.add_chain(path, BINARY if real in programs else
                          LIBRARY if closure.has(real) else DATA)
    extra_trees = {layout.owner(os.path.realpath(s.prefix)): t for s, t in (trees or {}).items()}
    owners = {layout.owner(src) for src in planner.plan.files.values()} | set(extra_trees)
    specs = sorted((o for o in owners if o.is_spec), key=lambda o: o.label)
    prefixes = tuple(o.prefix for o in specs)
    for owner in specs:
        planner.add_data(owner, prefixes, DATA_TREES + extra_trees.get(owner, ()))
    return planner.plan
