"""Which shared libraries an executable loads, resolved the way glibc's ld.so does.

Nothing in Spack walks DT_NEEDED transitively, and running ``ldd`` would execute the
target's loader, which neither works across architectures nor is safe. So this module
models ld.so (glibc ``elf/dl-load.c``, ``_dl_map_object``) on ELF data read with Spack's
``spack.util.elf`` (through :mod:`elf`, which has pyelftools read what it declines):

* objects are loaded breadth first, each NEEDED name once per process: a later request
  for a name that is already loaded (as a NEEDED string or a SONAME), or for a file that is
  already loaded under another name, reuses that object;
* a NEEDED string with a slash is opened as a path;
* otherwise, for a requesting object without DT_RUNPATH, the DT_RPATH of that object and
  then of every object up its chain of loaders to the executable are searched; an object
  with DT_RUNPATH has its DT_RPATH ignored (``get-dynamic-info.h``), and its DT_RUNPATH
  is searched for its own NEEDED only, never inherited;
* unless the requester is linked with ``-z nodeflib``, the loader's cache directories
  (``ld.so.conf``) and then its built-in system directories come last;
* ``$ORIGIN``/``${ORIGIN}`` is the directory of the object as it was found (of the real
  file for the executable, as the kernel reports it), ``$LIB`` and ``$PLATFORM`` take the
  build host's values;
* a candidate of another ELF class, byte order or machine, or not a shared object, is
  skipped and the search goes on.

``LD_LIBRARY_PATH`` is ignored on purpose: what an image contains must not depend on the
shell it was built from. Libraries that the host policy keeps on the host by name are
recorded and not searched for; those it keeps because of the spec owning the file (an
external) are found first. Either way nothing they load is followed: the host that runs
the image provides them.
"""

import collections
import functools
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .elf import ElfObject, glibc_requirement, read_elf
from .errors import ClosureError, unreadable
from .policy import HostPolicy

_TOKEN = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


@dataclass(frozen=True)
class LoaderSearch:
    """The build host's loader: its system directories and dynamic string tokens."""

    system_dirs: Tuple[str, ...]
    lib: str
    platform: str

    @staticmethod
    def host() -> "LoaderSearch":
        """Directories from ld.so.conf (the loader's cache), then the loader's built-in
        system directories, as Spack finds them for its own library checks."""
        import spack.util.ld_so_conf
        import spack.util.libc

        interpreter = _python_interpreter()
        builtin = (
            spack.util.libc.default_search_paths_from_dynamic_linker(interpreter)
            if interpreter
            else []
        )
        dirs = list(spack.util.ld_so_conf.host_dynamic_linker_search_paths()) + builtin
        # glibc expands $LIB to its slibdir's last components: lib/<triplet> on
        # multiarch (Debian) systems, lib64 or lib elsewhere.
        multiarch = [d for d in builtin if re.match(r"^/lib/[^/]+-linux-gnu[^/]*$", d)]
        if multiarch:
            lib = multiarch[0].lstrip("/")
        else:
            lib = "lib64" if any(d.endswith("lib64") for d in builtin) else "lib"
        return LoaderSearch(tuple(dict.fromkeys(dirs)), lib, platform.machine())


def _python_interpreter() -> Optional[str]:
    import sys

    obj = read_elf(os.path.realpath(sys.executable))
    return obj.interpreter if obj else None


@dataclass(frozen=True)
class Found:
    """How a NEEDED entry was resolved, in libtree's terms: ``kind`` is ``rpath`` or
    ``runpath`` (of ``object``, in ``directory``), ``system`` (an ld.so.conf or built-in
    directory), ``path`` (a NEEDED with a slash), ``loaded`` (already in the process
    under another name) or ``host`` (the policy keeps it on the host, for ``reason``).
    Reports render it (:mod:`report`)."""

    kind: str
    directory: Optional[str] = None
    object: Optional[str] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class Link:
    """One DT_NEEDED entry of one object, resolved."""

    needed: str
    #: The path the loader opens (symlinks not followed); None when the host provides it.
    load_path: Optional[str]
    #: The real path of the library; None when the host provides it by name.
    real_path: Optional[str]
    #: Why the host provides it; None when it is bundled.
    host_reason: Optional[str]
    #: How it was found.
    found_via: Found


@dataclass
class Closure:
    """Every ELF object the entries load, and how each NEEDED was resolved.

    Keys are real paths, so a library reached under several names is one object."""

    entries: List[str] = field(default_factory=list)
    objects: Dict[str, ElfObject] = field(default_factory=dict)
    links: Dict[str, Dict[str, Link]] = field(default_factory=dict)
    #: real path -> the paths the loader opened it through (symlinks, SONAME links)
    load_paths: Dict[str, List[str]] = field(default_factory=dict)

    def paths(self) -> List[str]:
        """Real paths of every object: the entries and the libraries they load."""
        return list(self.objects)

    def has(self, real_path: str) -> bool:
        return real_path in self.objects

    def links_of(self, real_path: str) -> List[Link]:
        """The resolved NEEDED entries of the object at ``real_path``, in its order."""
        return list(self.links.get(real_path, {}).values())

    def load_paths_of(self, real_path: str) -> List[str]:
        """The paths the loader opens the object at ``real_path`` through."""
        return self.load_paths.get(real_path, [])

    @functools.cached_property
    def glibc_requirement(self) -> Optional[str]:
        """The oldest host glibc every object can run on (:func:`elf.glibc_requirement`),
        asked by AppRun's table and by the manifest: computed once, after resolution."""
        return glibc_requirement(self.objects.values())

    def libraries(self) -> List[str]:
        """Real paths of the libraries (the objects that are not entries)."""
        entries = set(self.entries)
        return [path for path in self.objects if path not in entries]

    def host_requirements(self, start: Optional[str] = None) -> Dict[str, str]:
        """Library name -> why the host provides it: for everything, or for what the
        object at real path ``start`` (an entry) loads."""
        objects = self.objects if start is None else self.reachable(start)
        return {
            link.needed: link.host_reason
            for path in objects
            for link in self.links.get(path, {}).values()
            if link.host_reason
        }

    def reachable(self, start: str) -> List[str]:
        """Real paths of ``start`` and of the bundled objects it loads, in load order."""
        seen = [start]
        for path in seen:
            for link in self.links.get(path, {}).values():
                if link.real_path and not link.host_reason and link.real_path not in seen:
                    seen.append(link.real_path)
        return seen


@dataclass
class _Loaded:
    """An object loaded into one simulated process."""

    obj: ElfObject
    real_path: str
    origin: str
    loader: Optional["_Loaded"]
    rpath_dirs: Tuple[str, ...]
    runpath_dirs: Optional[Tuple[str, ...]]


class Resolver:
    """Resolves executables into one :class:`Closure`, caching parsed files across them."""

    def __init__(self, policy: HostPolicy, search: Optional[LoaderSearch] = None):
        self.policy = policy
        self.search = search or LoaderSearch.host()
        self._parsed: Dict[str, Optional[ElfObject]] = {}
        self.closure = Closure()

    def parse(self, path: str) -> Optional[ElfObject]:
        if path not in self._parsed:
            try:
                self._parsed[path] = read_elf(path) if os.path.isfile(path) else None
            except PermissionError as e:
                raise unreadable(path, e) from e
        return self._parsed[path]

    def add_executable(self, path: str) -> None:
        """Simulate the loader starting ``path`` and add what it loads to the closure."""
        real = os.path.realpath(path)
        main = self.parse(real)
        if main is None:
            raise ClosureError(
                f"{path} is not an ELF executable", "name a compiled program as --entry"
            )
        self.closure.entries.append(real)
        self._load_process(self._load(main, real, os.path.dirname(real), None))

    def add_library(self, path: str) -> None:
        """Add a library that a program loads with dlopen (a plugin), and what it needs,
        resolved with the library's own search paths as the root of the search."""
        real = os.path.realpath(path)
        obj = self.parse(real)
        if obj is None or not obj.shared:
            raise ClosureError(f"{path} is not a shared library", "include .so files only")
        self._record_load_path(real, path)
        if real not in self.closure.links:
            self._load_process(self._load(obj, real, os.path.dirname(path), None))

    def _load_process(self, root: _Loaded) -> None:
        """Breadth-first loading from ``root``, one simulated process."""
        by_name: Dict[str, _Loaded] = {}
        by_real: Dict[str, _Loaded] = {root.real_path: root}
        queue = collections.deque([root])
        while queue:
            current = queue.popleft()
            for needed in current.obj.needed:
                link, child = self._resolve(needed, current, root, by_name, by_real)
                self.closure.links.setdefault(current.real_path, {}).setdefault(needed, link)
                if child is None:
                    continue
                by_name[needed] = child
                if child.obj.soname:
                    by_name.setdefault(child.obj.soname, child)
                if child.real_path not in by_real:
                    by_real[child.real_path] = child
                    queue.append(child)
            self.closure.links.setdefault(current.real_path, {})

    def _load(self, obj, real_path, origin, loader) -> _Loaded:
        self.closure.objects.setdefault(real_path, obj)
        expand = lambda dirs: tuple(self._expand(d, origin) for d in dirs)  # noqa: E731
        runpath = expand(obj.runpath) if obj.runpath is not None else None
        return _Loaded(obj, real_path, origin, loader, expand(obj.rpath), runpath)

    def _expand(self, value: str, origin: str) -> str:
        values = {"ORIGIN": origin, "LIB": self.search.lib, "PLATFORM": self.search.platform}
        return _TOKEN.sub(lambda m: values[m.group(1) or m.group(2)], value)

    def _candidates(self, current: _Loaded, root: _Loaded) -> Iterable[Tuple[str, Found]]:
        """(directory, how it was found) in the loader's order for ``current``'s NEEDED."""
        if current.runpath_dirs is None:
            chain, seen_root = current, False
            while chain is not None:
                seen_root |= chain is root
                for d in chain.rpath_dirs:
                    yield d, Found("rpath", d, os.path.basename(chain.real_path))
                chain = chain.loader
            if not seen_root:
                for d in root.rpath_dirs:
                    yield d, Found("rpath", d, os.path.basename(root.real_path))
        else:
            for d in current.runpath_dirs:
                yield d, Found("runpath", d, os.path.basename(current.real_path))
        if not current.obj.nodeflib:
            for d in self.search.system_dirs:
                yield d, Found("system", d)

    def _resolve(self, needed, current, root, by_name, by_real):
        reason = self.policy.reason(os.path.basename(needed))
        if reason:
            return Link(needed, None, None, reason, Found("host", reason=reason)), None
        expanded = self._expand(needed, current.origin)
        if "/" in expanded:
            candidates: Iterable[Tuple[str, Found]] = [
                (os.path.dirname(expanded), Found("path", os.path.dirname(expanded)))]
            needed_file = os.path.basename(expanded)
        else:
            if needed in by_name:
                loaded = by_name[needed]
                return self._link(needed, loaded, Found("loaded")), loaded
            candidates = self._candidates(current, root)
            needed_file = needed
        searched = []
        for directory, via in candidates:
            path = os.path.join(directory, needed_file)
            searched.append(directory)
            candidate = self.parse(path)
            if candidate is None or not root.obj.can_load(candidate):
                continue
            real = os.path.realpath(path)
            reason = self.policy.file_reason(real)
            if reason:
                return Link(needed, None, real, reason, via), None
            if real in by_real:
                loaded = by_real[real]
            else:
                loaded = self._load(candidate, real, directory, current)
            self._record_load_path(real, path)
            return Link(needed, path, real, None, via), loaded
        raise ClosureError(
            f"cannot find {needed}, needed by {current.real_path}",
            "install the package that provides it into the environment, or reinstall the "
            "package that needs it",
            "searched: " + (", ".join(dict.fromkeys(searched)) or "nothing"),
        )

    def _link(self, needed: str, loaded: _Loaded, via: Found) -> Link:
        # The object was loaded under another name; the staged image must still have
        # a file named ``needed`` next to it, so record that path when it exists.
        paths = self.closure.load_paths.get(loaded.real_path, [])
        directory = os.path.dirname(paths[0]) if paths else os.path.dirname(loaded.real_path)
        path = os.path.join(directory, needed)
        if os.path.exists(path):
            self._record_load_path(loaded.real_path, path)
        else:
            path = paths[0] if paths else loaded.real_path
        return Link(needed, path, loaded.real_path, None, via)

    def _record_load_path(self, real: str, path: str) -> None:
        paths = self.closure.load_paths.setdefault(real, [])
        if path not in paths:
            paths.append(path)


def resolve(executables: Sequence[str], policy: HostPolicy, search=None) -> Closure:
    """The closure of ``executables``: each simulated as its own process."""
    resolver = Resolver(policy, search)
    for path in executables:
        resolver.add_executable(path)
    return resolver.closure
