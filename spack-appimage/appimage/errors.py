"""User-facing errors.

Every failure a user can cause is an :class:`AppImageError`: Spack prints it as one
``==> Error:`` line (the message names the cause, the long message the fix) and exits
with status 1, without a traceback.
"""

from spack.error import SpackError


class AppImageError(SpackError):
    """Base class of the errors this extension raises."""


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
