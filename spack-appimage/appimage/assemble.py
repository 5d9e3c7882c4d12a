"""The output file: runtime, then squashfs, written so that no partial file ever appears.

The squashfs is written by mksquashfs into a temporary file next to the output, after
room for the runtime (``-offset``), the runtime is written into that room, the file is
fsynced and made executable, and only then does it take the output's name (``rename``,
or ``link`` when an existing file must not be replaced). A failed or interrupted build
leaves the output path as it was.
"""

import fcntl
import hashlib
import os
import struct
import tempfile
import zlib
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from . import scratch
from .errors import OutputError, temporary

MAGIC_OFFSET = 8
MAGIC = b"AI\x02"


def elf_size(path: str) -> int:
    """Where the ELF part of ``path`` ends, computed as the AppImage runtime does:
    the end of the section header table or of the last section, whichever is later; a
    SHT_NOBITS section (.bss) holds no bytes of the file (runtime.c's elf_end: the same
    rule)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        end = elf["e_shoff"] + elf["e_shentsize"] * elf["e_shnum"]
        if elf.num_sections():
            last = elf.get_section(elf.num_sections() - 1)
            if last["sh_type"] != "SHT_NOBITS":
                end = max(end, last["sh_offset"] + last["sh_size"])
        return end


def stamp_magic(path: str) -> None:
    """Mark the runtime at ``path`` as a type-2 AppImage runtime (``AI\\x02`` at 8)."""
    with open(path, "rb+") as f:
        f.seek(MAGIC_OFFSET)
        f.write(MAGIC)


def check_runtime(path: str) -> None:
    """A type-2 runtime: an ELF file with ``AI\\x02`` at offset 8 and nothing after its
    ELF end, since the squashfs must start exactly there."""
    fix = "pass an AppImage type-2 runtime file (e.g. runtime-x86_64 from AppImage/type2-runtime)"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = os.path.getsize(path)
    except OSError as e:
        raise OutputError(f"cannot read the runtime {path}: {e.strerror}", fix) from e
    if head[:4] != b"\x7fELF":
        raise OutputError(f"the runtime {path} is not an ELF file", fix)
    if head[MAGIC_OFFSET:MAGIC_OFFSET + 3] != MAGIC:
        raise OutputError(f"the runtime {path} has no AppImage type-2 magic (AI\\x02 at offset 8)", fix)
    try:
        end = elf_size(path)
    except (ELFError, ValueError) as e:
        raise OutputError(f"the runtime {path} is not a readable ELF file ({e})", fix) from e
    if end != size:
        raise OutputError(
            f"the runtime {path} has {size - end} bytes after its ELF end",
            "use the runtime file itself, not an AppImage or a padded copy",
        )


def check_output(output: str, force: bool, flag: str = "-o") -> None:
    """Refuse, before any work, an output (given with ``flag``) that cannot or must not
    be written."""
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise OutputError(f"the output {output} is a directory", f"pass a file name with {flag}")
    if os.path.lexists(output) and not force:
        raise OutputError(f"{output} already exists",
                          f"pass --force to replace it, or choose another {flag}")
    if not os.path.isdir(directory):
        raise OutputError(f"the output directory {directory} does not exist", "create it first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"the output directory {directory} is not writable",
                          f"choose another {flag}")


@contextmanager
def output_file(output: str, force: bool, executable: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``output``; on success it becomes ``output``
    (mode 0755, or 0644 when not ``executable``).

    The temporary's name carries the builder's PID and the builder holds its lock, so
    later builds remove what a killed build (SIGKILL, a lost node) left
    (:func:`scratch.remove_stale`, run first)."""
    output = os.path.abspath(output)
    directory = os.path.dirname(output)
    scratch.remove_stale(directory)
    locks = []

    def create() -> str:
        fd, path = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(output)}.{scratch.PARTIAL}{os.getpid()}-")
        fcntl.flock(fd, fcntl.LOCK_EX)  # new: nobody else holds it
        locks.append(fd)
        return path

    def remove(path: str) -> None:
        if os.path.lexists(path):
            os.unlink(path)
        os.close(locks.pop())  # only once the file is gone

    with temporary(create, remove) as tmp:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755 if executable else 0o644)
        if force:
            os.replace(tmp, output)
        else:
            _link_without_replacing(tmp, output)


def write_runtime(runtime: str, target: str) -> None:
    """Copy the runtime over the first bytes of ``target``, left free by mksquashfs."""
    with open(runtime, "rb") as src, open(target, "rb+") as f:
        f.write(src.read())


def _link_without_replacing(tmp: str, output: str) -> None:
    """``link`` fails if ``output`` appeared meanwhile, so nothing is clobbered. On a
    filesystem without hard links, fall back to a check and a rename."""
    exists = OutputError(f"{output} already exists", "pass --force to replace it")
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise exists
    except OSError:
        if os.path.lexists(output):
            raise exists
        os.rename(tmp, output)


def section(path: str, name: str) -> Optional[Tuple[int, int]]:
    """(file offset, size) of the ELF section ``name`` of ``path``, if it has one."""
    with open(path, "rb") as f:
        found = ELFFile(f).get_section_by_name(name)
        return (found["sh_offset"], found["sh_size"]) if found else None


def fill_section(path: str, where: Tuple[int, int], data: bytes) -> None:
    """``data`` then zeros to the end of the section at ``where`` (offset, size) in
    ``path``: how the runtime's C strings and the AppImage tools' sections are filled
    in place. The caller has checked that ``data`` leaves room for a NUL."""
    offset, size = where
    with open(path, "rb+") as f:
        f.seek(offset)
        f.write(data + bytes(size - len(data)))


#: The squashfs superblock's size, and where it holds bytes_used and inode_table_start
#: (little-endian 64-bit; squashfuse's squashfs_fs.h, struct squashfs_super_block).
SUPERBLOCK = 96
BYTES_USED, INODE_TABLE = 40, 64


def squashfs_sums(f, start: int) -> Tuple[str, int, int]:
    """In one pass over the squashfs at ``start`` in ``f`` (to the end of the file): its
    SHA-256, and CRC-32s (the same bytes as runtime/verify.c's squashfs_check) of its
    superblock and metadata (everything from the inode table to ``bytes_used``, where
    mksquashfs writes all its tables), checked at each mount, and of all of it (to
    ``bytes_used``), checked at each extraction."""
    f.seek(start)
    superblock = f.read(SUPERBLOCK)
    (end,) = struct.unpack_from("<Q", superblock, BYTES_USED)
    (tables,) = struct.unpack_from("<Q", superblock, INODE_TABLE)
    digest = hashlib.sha256(superblock)
    whole, metadata, at = zlib.crc32(superblock), zlib.crc32(superblock), SUPERBLOCK
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
        counted = block[:max(0, end - at)]  # mksquashfs pads after bytes_used
        whole = zlib.crc32(counted, whole)
        if at + len(counted) > tables:
            metadata = zlib.crc32(counted[max(0, tables - at):], metadata)
        at += len(block)
    if at < end:
        raise OutputError("the squashfs is shorter than its superblock says",
                          "check free space where the output goes, then build again")
    return digest.hexdigest(), metadata, whole


def stamp_image_id(image: str, runtime: str, id_section: str, unpacked_bytes: int) -> None:
    """Write "<id> <unpacked bytes> <metadata CRC> <squashfs CRC>" into the runtime's ID
    section of ``image``: the first 128 bits of the squashfs's SHA-256, so the runtime keys
    its extraction cache and shared mount by content without hashing the file at every
    start; and the CRC-32s of :func:`squashfs_sums`, which the runtime checks once per mount or extraction
    before squashfuse reads anything (runtime/verify.c; runtime.c's open_image reads the
    fields). The unpacked bytes stay in second place for runtimes of earlier releases,
    which read the first two fields; this one skips them. Runtimes without the section
    (the official one) are left as they are."""
    where = section(runtime, id_section)
    if where is None:
        return
    with open(image, "rb") as f:
        sha256, metadata, whole = squashfs_sums(f, os.path.getsize(runtime))
    fill_section(image, where, f"{sha256[:32]} {unpacked_bytes} {metadata:08x} "
                               f"{whole:08x}".encode())
