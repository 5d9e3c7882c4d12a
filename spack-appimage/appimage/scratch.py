"""The temporary AppDir of a build: where it goes, and the removal of what killed builds
left.

A build's AppDir is ``spack-appimage-build-<pid>-XXXXXXXX`` (mode 0700, the PID of the
build) in the directory :func:`scratch_parent` picks; its partial output is
``.<name>.spack-appimage-part-<pid>-XXXXXXXX`` next to the output
(:func:`assemble.output_file`). The build holds an exclusive ``flock`` on each for as
long as it exists. SIGTERM, SIGINT and SIGHUP let the build remove them; SIGKILL (a job's
time limit, the OOM killer) does not, and in /dev/shm what is left is memory of a shared
node. So every build first removes what dead builds left (:func:`remove_stale`): this
user's directories and files with those names whose PID is gone and whose lock is free.
The lock covers a live build whose PID this process cannot see (another PID namespace);
the PID covers the instant between a build's ``mkdtemp`` and its ``flock``.
"""

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tempfile
from typing import Iterator, Optional

from .errors import full_disk_names, temporary

PREFIX = "spack-appimage-build-"
#: After ``.<output name>.``: a partial output.
PARTIAL = "spack-appimage-part-"
#: A name of either, with the PID of the build that made it.
_LEFT_BY_A_BUILD = re.compile(rf"(?:{PREFIX}|\..*\.{PARTIAL})(\d+)-[^.]*")

#: What to do when the AppDir's file system is full (after "free space there or").
ELSEWHERE = "set TMPDIR to a directory with room"

#: A memory file system for the temporary AppDir, when it has room (:func:`scratch_parent`).
SHM = "/dev/shm"


def scratch_parent(size: int) -> Optional[str]:
    """Where the temporary AppDir of ``size`` bytes goes: ``$TMPDIR`` when it is set (a
    site's or a job's choice of scratch space); else :data:`SHM` when it is a tmpfs with
    room for it twice over and the memory this process may still use (the machine's, or
    its cgroup's limit) is at least four times ``size``; else None (``/tmp``).

    Copying is most of the staging: for CPython's 1,488 files (63 MB) it took 1.19 s into
    /tmp on ext4 and 0.09 s into /dev/shm on the same machine, and mksquashfs then reads
    from memory. The AppDir lives only until mksquashfs has read it."""
    if os.environ.get("TMPDIR"):
        return None
    try:
        shm = os.statvfs(SHM)
        with open("/proc/self/mountinfo") as f:
            on_tmpfs = any(line.split()[4] == SHM and " - tmpfs " in line for line in f)
        available = _memory_available()
    except (OSError, ValueError):
        return None
    room = shm.f_bavail * shm.f_frsize
    if on_tmpfs and os.access(SHM, os.W_OK) and room >= 2 * size and available >= 4 * size:
        return SHM
    return None


def _memory_available() -> int:
    """Bytes of memory available: MemAvailable, capped by the memory cgroup's limit (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``) less what the cgroup uses."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f
                         if line.startswith("MemAvailable:"))
    with open("/proc/self/cgroup") as f:
        groups = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
    for controller, limit_file, usage_file in (("memory", "memory.limit_in_bytes",
                                                "memory.usage_in_bytes"),
                                               ("", "memory.max", "memory.current")):
        if controller not in groups:
            continue
        base = os.path.join("/sys/fs/cgroup", controller, groups[controller].lstrip("/"))
        try:
            with open(os.path.join(base, limit_file)) as f:
                limit = f.read().strip()
            with open(os.path.join(base, usage_file)) as f:
                used = int(f.read())
        except OSError:
            continue
        if limit.isdigit():
            available = min(available, int(limit) - used)
    return available


@contextlib.contextmanager
def appdir(parent: Optional[str]) -> Iterator[str]:
    """A new AppDir in ``parent`` (None: tempfile's directory), locked while the block
    runs and removed after it."""
    locks = []

    def create() -> str:
        with full_disk_names(parent or tempfile.gettempdir(), ELSEWHERE):
            path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
        try:
            locks.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            os.rmdir(path)
            raise
        fcntl.flock(locks[0], fcntl.LOCK_EX)  # new and private: nobody else can hold it
        return path

    def remove(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        os.close(locks.pop())  # only once the directory is gone

    with temporary(create, remove) as path:
        yield path


def remove_stale(*directories: str) -> None:
    """Remove what killed builds of this user left where builds put their AppDirs and
    in ``directories`` (where outputs go)."""
    for parent in sorted({SHM, "/tmp", tempfile.gettempdir(), *directories}):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            left = _LEFT_BY_A_BUILD.fullmatch(name)
            if left and not _running(int(left.group(1))):
                _remove_if_unlocked(os.path.join(parent, name))


def _remove_if_unlocked(path: str) -> None:
    """Remove ``path`` if it is this user's directory or file (never a symlink's target,
    nor a FIFO that would block the open) and nobody holds its lock."""
    try:
        seen = os.lstat(path)
        if seen.st_uid != os.geteuid() or not (stat.S_ISDIR(seen.st_mode) or
                                               stat.S_ISREG(seen.st_mode)):
            return  # another user's, or not what a build makes
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if not os.path.samestat(seen, os.fstat(fd)):
            return  # replaced since the lstat
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live build, or another build removing it now
        if stat.S_ISDIR(seen.st_mode):
            # rmtree never follows symlinks: on Linux it walks the tree by descriptors
            # and refuses a top that is no longer the directory it opened.
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass  # gone meanwhile: another build removed it
    finally:
        os.close(fd)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (no PID is that large)
        return False
    except PermissionError:  # another user's process now has that PID
        return True
    return True
