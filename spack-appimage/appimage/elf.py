"""Reading ELF files: what the loader needs of each, as plain data (:class:`ElfObject`).

One error rule: a file that starts like ELF but cannot be parsed (truncated, a damaged
version section, a dynamic string that is not UTF-8) is a one-line
:class:`~.errors.ClosureError` naming it, whatever the parser tripped on; a file that is
not ELF is ``None``; an ``OSError`` is the caller's to report.
"""

import re
import struct
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import spack.util.elf as spack_elf
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.gnuversions import GNUVerNeedSection

from .errors import ClosureError

#: ``-z nodeflib``: the object's NEEDED are not searched in the system directories (elf.h)
DF_1_NODEFLIB = 0x800
DT_FLAGS_1 = 0x6FFFFFFB
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
_GLIBC_VERSION = re.compile(r"GLIBC_(\d+(?:\.\d+)+)$")


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
    """Parse ``path``; None if it is not an ELF file. An OSError opening it propagates.

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
            try:
                return _read_with_spack(path, f)
            except spack_elf.ElfParsingError:
                f.seek(0)
                return _read_with_pyelftools(path, f)
        # Both parsers read untrusted bytes and fail in their own ways (struct.error,
        # IndexError, a seek to an impossible offset, pyelftools' ELFError and construct
        # errors, ...): every one of them means the same thing to the user. An interrupt
        # is a BaseException (errors.Interrupted, KeyboardInterrupt): it passes through,
        # and through construct's own ``except Exception`` wrappers.
        except Exception as e:
            raise ClosureError(
                f"{path} is not a readable ELF file ({_why(e)})",
                "reinstall the package that owns it: spack install --overwrite <spec>",
            ) from e


def _why(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "a NEEDED, RPATH, RUNPATH, SONAME or interpreter string is not UTF-8"
    if isinstance(error, struct.error):
        return f"truncated or damaged: {error}"
    return " ".join(str(error).split()) or type(error).__name__


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
                _, _, _, name_offset, aux_next = vernaux.unpack(f.read(vernaux.size))
                f.seek(parsed.pt_dynamic_strtab_offset + name_offset)
                name = f.read(64).split(b"\0", 1)[0].decode(errors="replace")
                match = _GLIBC_VERSION.match(name)
                if match:
                    newest = max(newest, tuple(int(x) for x in match.group(1).split(".")))
                if not aux_next:  # the chain ends here whatever the counts say, as in ld.so
                    break
                aux_at += aux_next
            if not following:
                break
            at += following
    return tags.get(DT_FLAGS_1, 0), newest


def _read_with_pyelftools(path, f) -> ElfObject:
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


#: Per ELF class: the header from e_shoff on (e_shoff, e_flags, e_ehsize, e_phentsize,
#: e_phnum, e_shentsize, e_shnum, e_shstrndx), its offset, and a section header's first
#: seven fields (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link).
_SECTION_TABLE = {1: ("IIHHHHHH", 0x20, "IIIIIII"), 2: ("QIHHHHHH", 0x28, "IIQQQQI")}
SHF_ALLOC = 0x2
SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF


def loaded_sections(f) -> List[Tuple[str, int, int]]:
    """(name, file offset, size) of each section of the ELF file open in ``f`` that a
    process has in memory (SHF_ALLOC, not SHT_NOBITS), read from the section header
    table alone. pyelftools builds an object per section: 0.75 ms a library, 1.5 s for
    the 2,000 of bench/run.py's tree, which the leak search paid for every ELF file it
    staged. ``f`` may be an mmap: reads then stop at the end of the file whatever sizes
    a damaged table claims. Raises ``struct.error``, ``ValueError`` or ``IndexError`` on
    a damaged table."""
    f.seek(0)
    ident = f.read(16)
    if ident[4] not in _SECTION_TABLE or ident[5] not in (1, 2):
        raise ValueError("unknown ELF class or byte order")
    header_format, at, section_format = _SECTION_TABLE[ident[4]]
    order = "<" if ident[5] == 1 else ">"
    f.seek(at)
    fields = struct.unpack(order + header_format, f.read(struct.calcsize(order + header_format)))
    shoff, (shentsize, shnum, shstrndx) = fields[0], fields[-3:]
    if shoff == 0:  # no section table (sstrip): nothing to tell the sections apart
        raise ValueError("no section header table")
    entry = struct.Struct(order + section_format)
    f.seek(shoff)
    first = entry.unpack(f.read(entry.size))
    # Past 0xff00 sections the count and the string table's index live in section 0.
    shnum = shnum or first[5]
    shstrndx = first[6] if shstrndx == SHN_XINDEX else shstrndx
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    headers = [entry.unpack_from(table, i * shentsize) for i in range(shnum)]
    names_at, names_size = headers[shstrndx][4:6]
    f.seek(names_at)
    names = f.read(names_size)
    return [
        (names[name:names.index(b"\0", name)].decode(errors="replace"), offset, size)
        for name, kind, flags, _, offset, size, _ in headers
        if flags & SHF_ALLOC and kind != SHT_NOBITS
    ]


def glibc_requirement(objects: Iterable[ElfObject]) -> Optional[str]:
    """The newest ``GLIBC_x.y`` symbol version that any of ``objects`` needs, e.g. "2.34":
    the oldest host glibc the image can run on."""
    return ".".join(map(str, max((o.glibc for o in objects), default=()))) or None
