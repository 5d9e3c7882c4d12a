"""Which shared libraries an executable loads, resolved the way glibc's ld.so does.

Nothing in Spack walks DT_NEEDED transitively, and running ``ldd`` would execute the
target's loader, which neither works across architectures nor is safe. So this module
models ld.so (glibc ``elf/dl-load.c``, ``_dl_map_object``) on ELF data read with Spack's
``spack.util.elf`` (pyelftools for what it declines, see :func:`read_elf`):

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
import os
import platform
import re
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import spack.util.elf as spack_elf
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.gnuversions import GNUVerNeedSection

from .errors import ClosureError, unreadable
from .policy import HostPolicy

#: ``-z nodeflib``: the object's NEEDED are not searched in the system directories (elf.h)
DF_1_NODEFLIB = 0x800
DT_FLAGS_1 = 0x6FFFFFFB
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
_GLIBC_VERSION = re.compile(r"GLIBC_(\d+(?:\.\d+)+)$")

_TOKEN = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


@dataclass(frozen=True)
class ElfObject:
    """The parts of an ELF file that decide how the loader treats it."""

    path: str
    elf_class: int
    little_endian: bool
    machine: int  # e_machine
    shared: bool
    needed: Tuple[str, ...]
    rpath: Tuple[str, ...]
    runpath: Optional[Tuple[str, ...]]
    soname: Optional[str]
    nodeflib: bool
    interpreter: Optional[str]
    #: the newest GLIBC_x.y symbol version it needs, e.g. (2, 34); () if none
    glibc: Tuple[int, ...] = ()

    def can_load(self, other: "ElfObject") -> bool:
        """Whether the loader of this object's process accepts ``other`` as a library."""
        return (
            other.shared
            and other.elf_class == self.elf_class
            and other.little_endian == self.little_endian
            and other.machine == self.machine
        )


def _split_path_list(value: str) -> Tuple[str, ...]:
    # ld.so reads an empty element as the current directory; at build time that is
    # meaningless, so empty elements are dropped.
    return tuple(part for part in value.split(":") if part)


def read_elf(path: str) -> Optional[ElfObject]:
    """Parse ``path``; None if it is not an ELF file. OSError propagates.

    Spack's own parser (``spack.util.elf``) reads what the loader needs 8x faster than
    pyelftools (measured on 1,000 gcc-built libraries: 0.14 ms vs 1.13 ms a file), which
    is most of the closure's time on large trees; pyelftools reads what it declines
    (e.g. a file with both DT_RPATH and DT_RUNPATH). The two things Spack's parser does
    not keep, DT_FLAGS_1 and the GLIBC versions needed, come from one more pass over the
    dynamic array (pyelftools took 2.4 s for the versions of 2,000 libraries)."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        try:
            return _read_with_spack(path, f)
        except spack_elf.ElfParsingError:
            f.seek(0)
            return _read_with_pyelftools(path, f)


def _read_with_spack(path, f) -> ElfObject:
    parsed = spack_elf.parse_elf(f, interpreter=True, dynamic_section=True)
    paths = _split_path_list(parsed.dt_rpath_str.decode()) if parsed.has_rpath else ()
    runpath = paths if parsed.has_rpath and parsed.is_runpath else None
    flags_1, glibc = _flags_and_glibc(f, parsed)
    return ElfObject(
        path=path,
        elf_class=64 if parsed.is_64_bit else 32,
        little_endian=parsed.is_little_endian,
        machine=parsed.elf_hdr.e_machine,
        shared=parsed.elf_hdr.e_type == spack_elf.ELF_CONSTANTS.ET_DYN,
        needed=tuple(n.decode() for n in parsed.dt_needed_strs) if parsed.has_needed else (),
        rpath=paths if runpath is None else (),
        runpath=runpath,
        soname=parsed.dt_soname_str.decode() if parsed.has_soname else None,
        nodeflib=bool(flags_1 & DF_1_NODEFLIB),
        interpreter=parsed.pt_interp_str.decode() if parsed.has_pt_interp else None,
        glibc=glibc,
    )


def _flags_and_glibc(f, parsed) -> Tuple[int, Tuple[int, ...]]:
    """DT_FLAGS_1, and the newest GLIBC_x.y among the Elf_Vernaux names of DT_VERNEED."""
    if not parsed.has_pt_dynamic:
        return 0, ()
    entry = struct.Struct(parsed.byte_order + ("qQ" if parsed.is_64_bit else "lL"))
    f.seek(parsed.pt_dynamic_p_offset)
    data = f.read(parsed.pt_dynamic_p_filesz)
    tags = {}
    for tag, value in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
        if tag == 0:  # DT_NULL
            break
        tags[tag] = value
    newest: Tuple[int, ...] = ()
    if DT_VERNEED in tags:
        # Elf_Verneed and Elf_Vernaux are 16 bytes in both classes (elf.h).
        verneed = struct.Struct(parsed.byte_order + "HHIII")
        vernaux = struct.Struct(parsed.byte_order + "IHHII")
        at = spack_elf.vaddr_to_offset(parsed, tags[DT_VERNEED])
        for _ in range(tags.get(DT_VERNEEDNUM, 0)):
            f.seek(at)
            _, count, _, aux, following = verneed.unpack(f.read(verneed.size))
            aux_at = at + aux
            for _ in range(count):
                f.seek(aux_at)
                _, _, _, name, aux_next = vernaux.unpack(f.read(vernaux.size))
                f.seek(parsed.pt_dynamic_strtab_offset + name)
                match = _GLIBC_VERSION.match(f.read(64).split(b"\0", 1)[0].decode(errors="replace"))
                if match:
                    newest = max(newest, tuple(int(x) for x in match.group(1).split(".")))
                aux_at += aux_next
            at += following
    return tags.get(DT_FLAGS_1, 0), newest


def _read_with_pyelftools(path, f) -> ElfObject:
    try:
        elf = ELFFile(f)
        needed: List[str] = []
        rpath: Tuple[str, ...] = ()
        runpath = None
        soname = interpreter = None
        flags_1 = 0
        glibc: Tuple[int, ...] = ()
        for section in elf.iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for _, auxiliaries in section.iter_versions():
                    for aux in auxiliaries:
                        match = _GLIBC_VERSION.match(aux.name)
                        if match:
                            glibc = max(glibc, tuple(int(x) for x in match.group(1).split(".")))
        for segment in elf.iter_segments():
            kind = segment["p_type"]
            if kind == "PT_INTERP":
                interpreter = segment.get_interp_name()
            elif kind == "PT_DYNAMIC":
                for tag in segment.iter_tags():
                    name = tag.entry.d_tag
                    if name == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif name == "DT_RPATH":
                        rpath = _split_path_list(tag.rpath)
                    elif name == "DT_RUNPATH":
                        runpath = _split_path_list(tag.runpath)
                    elif name == "DT_SONAME":
                        soname = tag.soname
                    elif name == "DT_FLAGS_1":
                        flags_1 = tag.entry.d_val
        return ElfObject(
            path=path,
            elf_class=elf.elfclass,
            little_endian=elf.little_endian,
            machine=ENUM_E_MACHINE.get(elf["e_machine"], elf["e_machine"]),
            shared=elf["e_type"] == "ET_DYN",
            needed=tuple(needed),
            rpath=() if runpath is not None else rpath,
            runpath=runpath,
            soname=soname,
            nodeflib=bool(flags_1 & DF_1_NODEFLIB),
            interpreter=interpreter,
            glibc=glibc,
        )
    except (ELFError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise ClosureError(
            f"{path} is not a readable ELF file ({e})",
            "reinstall the package that owns it: spack install --overwrite <spec>",
        ) from e


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
class Link:
    """One DT_NEEDED entry of one object, resolved."""

    needed: str
    #: The path the loader opens (symlinks not followed); None when the host provides it.
    load_path: Optional[str]
    #: The real path of the library; None when the host provides it by name.
    real_path: Optional[str]
    #: Why the host provides it; None when it is bundled.
    host_reason: Optional[str]
    #: The RPATH, RUNPATH or system directory it was found in, for reports.
    found_via: str


@dataclass
class Closure:
    """Every ELF object the entries load, and how each NEEDED was resolved.

    Keys are real paths, so a library reached under several names is one object."""

    entries: List[str] = field(default_factory=list)
    objects: Dict[str, ElfObject] = field(default_factory=dict)
    links: Dict[str, Dict[str, Link]] = field(default_factory=dict)
    #: real path -> the paths the loader opened it through (symlinks, SONAME links)
    load_paths: Dict[str, List[str]] = field(default_factory=dict)

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

    def _candidates(self, current: _Loaded, root: _Loaded) -> Iterable[Tuple[str, str]]:
        """(directory, how it was found) in the loader's order for ``current``'s NEEDED."""
        if current.runpath_dirs is None:
            chain, seen_root = current, False
            while chain is not None:
                seen_root |= chain is root
                for d in chain.rpath_dirs:
                    yield d, f"RPATH of {os.path.basename(chain.real_path)}: {d}"
                chain = chain.loader
            if not seen_root:
                for d in root.rpath_dirs:
                    yield d, f"RPATH of {os.path.basename(root.real_path)}: {d}"
        else:
            for d in current.runpath_dirs:
                yield d, f"RUNPATH of {os.path.basename(current.real_path)}: {d}"
        if not current.obj.nodeflib:
            for d in self.search.system_dirs:
                yield d, f"system directory {d}"

    def _resolve(self, needed, current, root, by_name, by_real):
        reason = self.policy.reason(os.path.basename(needed))
        if reason:
            return Link(needed, None, None, reason, reason), None
        expanded = self._expand(needed, current.origin)
        if "/" in expanded:
            candidates: Iterable[Tuple[str, str]] = [(os.path.dirname(expanded), "path")]
            needed_file = os.path.basename(expanded)
        else:
            if needed in by_name:
                loaded = by_name[needed]
                return self._link(needed, loaded, "already loaded"), loaded
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

    def _link(self, needed: str, loaded: _Loaded, via: str) -> Link:
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


def glibc_requirement(objects: Iterable[ElfObject]) -> Optional[str]:
    """The newest ``GLIBC_x.y`` symbol version that any of ``objects`` needs, e.g. "2.34":
    the oldest host glibc the image can run on."""
    return ".".join(map(str, max((o.glibc for o in objects), default=()))) or None
