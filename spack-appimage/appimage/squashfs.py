"""The squashfs image of the AppDir, made by ``mksquashfs``.

mksquashfs is taken from the environment's own specs (a ``squashfs`` in the environment),
then from any installed ``squashfs`` in the store, then from PATH.

Defaults follow appimagetool: zstd with 128 KiB blocks (larger blocks make random access
at launch slower), files owned by root, no extended attributes, and fixed timestamps
(``SOURCE_DATE_EPOCH``, else 0) so that the same AppDir gives the same bytes.
"""

import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterable, Iterator, Optional

from . import installed, prerequisites
from .errors import FULL_DISK, INTERRUPT_SIGNALS, ToolError

COMPRESSIONS = ("gzip", "xz", "lz4", "zstd")

#: What the official AppImage runtime (type2-runtime) can decompress.
OFFICIAL_RUNTIME_READS = ("gzip", "zstd")

BLOCK_SIZE = "128K"


def find_mksquashfs(specs: Iterable) -> str:
    import spack.util.executable

    candidates = [s for s in specs if s.name == "squashfs"] + installed.named("squashfs")
    for spec in candidates:
        found = spack.util.executable.which_string("mksquashfs", path=[spec.prefix.bin])
        if found:
            return found
    found = spack.util.executable.which_string("mksquashfs")
    if not found:
        raise ToolError("mksquashfs not found",
                        f"install it: {prerequisites.install_command('mksquashfs')}")
    return found


def check_compression(mksquashfs: str, compression: str) -> None:
    """Fail early if this mksquashfs was built without ``compression``."""
    result = subprocess.run([mksquashfs, "-help"], capture_output=True, text=True)
    listing = result.stdout + result.stderr
    known = [line.split()[0] for line in listing.splitlines() if line.startswith("\t") and
             line.split() and line.split()[0] in COMPRESSIONS + ("lzo", "lzma")]
    if known and compression not in known:
        raise ToolError(
            f"{mksquashfs} cannot compress with {compression} (it has: {', '.join(known)})",
            "choose another --compression, or install a mksquashfs built with "
            f"{compression} (`spack install squashfs+{compression}`)",
        )


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise ToolError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
            "set it to an integer, or unset it",
        )


def make(
    mksquashfs: str,
    appdir: str,
    output: str,
    *,
    offset: int,
    compression: str,
    jobs: Optional[int],
    progress: bool,
) -> None:
    """Write the squashfs of ``appdir`` into ``output`` starting at byte ``offset``."""
    when = str(source_date_epoch())
    command = [
        mksquashfs, appdir, output,
        "-noappend", "-offset", str(offset),
        "-comp", compression, "-b", BLOCK_SIZE,
        "-root-owned", "-no-xattrs",
        "-mkfs-time", when, "-all-time", when,
    ]
    if jobs:
        command += ["-processors", str(jobs)]
    if not progress:
        command += ["-no-progress", "-quiet"]
    # Bytes, not text: text mode would turn the bar's carriage returns into newlines.
    with _uninterrupted_start(command, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as process:
        if progress:
            output = _show_progress_bar(process.stdout, sys.stdout)
        else:
            output = process.stdout.read().decode(errors="replace")
    if process.returncode != 0:
        for code in FULL_DISK:  # "Write failed because No space left on device"
            if os.strerror(code) in output:
                raise OSError(code, os.strerror(code))  # the caller knows where it writes
        detail = output.strip().splitlines()
        raise ToolError(
            f"mksquashfs failed (exit {process.returncode}): "
            + (detail[-1] if detail else "no message"),
            "check free space and write permission where the output goes",
        )


@contextlib.contextmanager
def _uninterrupted_start(command, **kwargs) -> Iterator[subprocess.Popen]:
    """Popen, with the interrupt signals held until the process object exists, then
    killed and reaped if the block is interrupted.

    An interrupt that strikes inside ``subprocess.run`` between fork and Popen's return
    would orphan mksquashfs, which would then recreate the temporary output the cleanup
    has just removed."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
    try:
        process = subprocess.Popen(
            command, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, previous),
            **kwargs)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    with process:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a held signal lands here
            yield process
        except BaseException:
            process.kill()
            raise


def _show_progress_bar(stream, terminal) -> str:
    """Copy mksquashfs's progress bar (its ``\\r[===   ] n/m p%`` redraws) to ``terminal``;
    return the rest (a summary naming the temporary file, or an error) for errors."""
    rest, in_bar, drawn = [], False, False
    for byte in iter(lambda: stream.read(1), b""):
        if byte == b"\r":
            in_bar = drawn = True
            terminal.flush()
        elif byte == b"\n":
            in_bar = False
        if in_bar:
            terminal.write(byte.decode("ascii", "replace"))
        else:
            rest.append(byte)
    if drawn:
        terminal.write("\n")
        terminal.flush()
    return b"".join(rest).decode(errors="replace")
