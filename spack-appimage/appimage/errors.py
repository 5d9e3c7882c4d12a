"""User-facing errors.

Every failure a user can cause is an :class:`AppImageError`: Spack prints it as one
``==> Error: <cause>; <fix>`` line and exits with status 1, without a traceback. Long
details (the directories searched, the audit's findings) follow on the next lines.
"""

import contextlib
import errno
import signal
from typing import Callable, Iterator, Optional

from spack.error import SpackError


def label(spec) -> str:
    """How messages and reports name a spec: ``name@version/hash7``."""
    return spec.cformat("{name}{@version}{/hash:7}")


class AppImageError(SpackError):
    """Base class of the errors this extension raises."""

    def __init__(self, cause: str, fix: Optional[str] = None, details: Optional[str] = None):
        super().__init__(f"{cause}; {fix}" if fix else cause, details)
        self.cause = cause


class EntryError(AppImageError):
    """An ``--entry`` cannot be found, is ambiguous, or is not runnable."""


class EnvironmentNotReady(AppImageError):
    """The environment is not concretized or not installed."""


class ClosureError(AppImageError):
    """A shared library cannot be resolved, or an ELF file cannot be read."""


class AuditError(AppImageError):
    """The staged AppDir still depends on the store or on unbundled libraries."""


class ToolError(AppImageError):
    """An external tool (mksquashfs, patchelf, a compiler) is missing or failed."""


class OutputError(AppImageError):
    """The output path cannot be written, or the runtime file is not usable."""


def unreadable(path: str, error: OSError) -> AppImageError:
    """A file of the environment that this user cannot read."""
    return AppImageError(
        f"cannot read {path}: {error.strerror}",
        "make the file readable by you, or reinstall the spec that owns it",
    )


#: A full file system, by errno (EDQUOT: the user's quota is used up).
FULL_DISK = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


@contextlib.contextmanager
def full_disk_names(directory: str, fix: str) -> Iterator[None]:
    """A full disk met in the block as one line naming ``directory``, where the block
    writes, and ``fix`` (after "free space there or"): the OSError names no file (a
    ``write``) or the source of a copy, and Spack reports it with exit status 3."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        raise OutputError(f"{FULL_DISK[e.errno]} writing in {directory}",
                          f"free space there or {fix}") from None


class Interrupted(BaseException):
    """SIGTERM or SIGHUP (a closed terminal) arrived during the build (SIGINT is
    KeyboardInterrupt); the build's signal handler raises it.

    A BaseException, as KeyboardInterrupt is: Spack wraps any Exception raised while it
    loads a package ("cannot load package 'gcc-runtime' ...: terminated by SIGTERM"), and
    ``except Exception`` blocks, Spack's and ours, must not swallow it. The build turns
    it into :class:`Terminated` once everything is cleaned up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Terminated(AppImageError):
    """What the user sees of :class:`Interrupted`: one line, exit 1."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}",
                         "the partial image and the temporary files were removed")


#: The signals that stop a build (``build`` raises them; ``squashfs`` holds them while it
#: starts mksquashfs, so that none strikes before the child can be killed).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def temporary(create: Callable[[], str], remove: Callable[[str], None]) -> Iterator[str]:
    """A temporary file or directory that ``create`` makes and ``remove`` removes, whatever
    stops the block. :data:`INTERRUPT_SIGNALS` are held from before it is created until the
    block owns it, and while it is removed: the handler raises at once, and an exception
    between creation and ``try``, or in the middle of a removal, would leave it behind.
    A signal that arrives meanwhile is delivered when it is held no longer."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
    try:
        path = create()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a held signal lands here
        yield path
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
        try:
            remove(path)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
