"""Files of the image that still name the store.

Relocation makes every RPATH relative, but programs also find their files through
paths compiled into them (a default prefix in ``.rodata``), written into scripts (a
``#!`` line, pip's launcher) or into configuration files. On the build machine those
work silently, by reading the store; elsewhere they fail. This finds them, so the dry
run lists them and the build warns, per spec.

Searched: every staged file, the bytes a program can read. For ELF files those are the
sections loaded into memory, minus ``.dynstr`` (its RPATHs are relocated and audited
separately); debug sections name build and source directories that nothing reads at
run time. Not searched: ``.pyc`` files, whose only store path is the source file name
compiled into the code objects, which only tracebacks show; the ``#!`` lines of script
entries, which AppRun runs with their bundled interpreter instead.

The store root is a plain byte string, so this is a substring search (``bytes.find``)
rather than Spack's relocation regex (``spack.relocate_text``), which also captures the
characters around each match for the replacement it is made for.
"""

import mmap
import os
import struct
from typing import Dict, Iterable, List

from .elf import loaded_sections
from .entries import shebang_length

#: ELF sections searched although loaded: the dynamic string table holds RPATH/RUNPATH.
_RELOCATED_SECTIONS = (".dynstr",)

#: Files never searched (see the module docstring).
SKIPPED_SUFFIXES = (".pyc",)


def names_store(path: str, store: bytes, skip: int = 0) -> bool:
    """Whether the file at ``path`` names ``store`` where a program could read it, past
    its first ``skip`` bytes."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"\x7fELF":
                return data.find(store, skip) >= 0
            hits = _occurrences(data, store)
            if not hits:
                return False
            try:
                sections = loaded_sections(data)
            except (struct.error, ValueError, IndexError, OverflowError):
                return True  # a table we cannot read: the bytes are what a program reads
    return any(start <= hit < start + size for hit in hits
               for name, start, size in sections if name not in _RELOCATED_SECTIONS)


def _occurrences(data, store: bytes) -> List[int]:
    hits, at = [], data.find(store)
    while at >= 0:
        hits.append(at)
        at = data.find(store, at + 1)
    return hits


def find(files: Dict[str, str], owner_label, store_root: str,
         script_entries: Iterable[str] = ()) -> Dict[str, List[str]]:
    """owner label -> AppDir paths of the planned ``files`` (AppDir path -> host file)
    that name ``store_root``. ``owner_label(dest)`` is the label of a file's spec;
    ``script_entries`` are the host paths of script entries, whose ``#!`` lines are not
    searched."""
    store = store_root.rstrip(os.sep).encode() + os.sep.encode()
    scripts = {os.path.realpath(p) for p in script_entries}
    found: Dict[str, List[str]] = {}
    for dest, src in sorted(files.items()):
        skip = shebang_length(src) if os.path.realpath(src) in scripts else 0
        if not dest.endswith(SKIPPED_SUFFIXES) and names_store(src, store, skip):
            found.setdefault(owner_label(dest), []).append(dest)
    return found
