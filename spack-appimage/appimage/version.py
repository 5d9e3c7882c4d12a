"""What this copy of the extension is: its version, and the commit of its git clone.

Everything that records or prints the extension's identity takes it from
:func:`identity`: ``spack appimage --version``, the manifest's ``tool``, and the
runtime's ``--appimage-version`` (stamped into an image's runtime when the image is
assembled).

The commit comes from git, run on the clone the extension is loaded from; ``dirty``
when the extension's own files (``spack-appimage/``, the runtime's C sources included)
differ from that commit, since then the commit alone does not say what ran. Without a
commit (a pip install, no ``git``, or a directory whose files git does not track) the
version alone is reported: it is all that is known, and a guess would mislead.

Only the clone's own ``.git`` is asked (the directory above ``spack-appimage/``), and only
when its owner owns the extension's files too: git runs commands a repository's config
names (``core.fsmonitor``), so a ``.git`` that another user planted above a copy of the
extension in ``/scratch`` would otherwise run code as everyone who builds an image.
"""

import functools
import os
import subprocess
from typing import NamedTuple, Optional

from . import __version__

#: The extension's root (``spack-appimage/``): what ``dirty`` looks at.
EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Identity(NamedTuple):
    version: str
    #: the clone's HEAD (40 hex digits), None when not a git clone
    commit: Optional[str] = None
    dirty: bool = False

    def __str__(self) -> str:
        """``spack-appimage 0.1.0 (commit 0123456789ab, dirty)``."""
        if not self.commit:
            return f"spack-appimage {self.version}"
        return (f"spack-appimage {self.version} (commit {self.commit[:12]}"
                f"{', dirty' if self.dirty else ''})")


@functools.lru_cache(maxsize=None)
def identity() -> Identity:
    """The version, and the commit of the clone with its dirtiness (once per process)."""
    root = _clone_root(EXTENSION_DIR)
    if root is None or _git(root, "ls-files", "--error-unmatch", "--",
                            os.path.join("appimage", "__init__.py")) is None:
        return Identity(__version__)
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    status = _git(root, "status", "--porcelain", "--", ".")
    if commit is None or status is None:
        return Identity(__version__)
    return Identity(__version__, commit.strip(), bool(status.strip()))


def _clone_root(extension: str) -> Optional[str]:
    """The clone ``extension`` (``spack-appimage/``) sits at the top of, if its ``.git``
    (a directory, or a file in a worktree) has the owner of the extension's files."""
    root = os.path.dirname(os.path.realpath(extension))
    try:
        git = os.lstat(os.path.join(root, ".git"))
    except OSError:
        return None
    return root if git.st_uid == os.stat(extension).st_uid else None


def _git(root: str, *args: str) -> Optional[str]:
    """stdout of ``git ARGS`` run in the extension's directory, None if it fails.

    ``safe.directory`` names the clone: on a site where an admin's clone serves every
    user, git would otherwise refuse it to anyone but its owner, and whoever owns the
    clone already owns the code Spack is running from it. ``--no-optional-locks``: a
    status never writes another user's index. ``GIT_*`` variables of the caller (a hook,
    a ``git rebase --exec``) must not point git at another repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        result = subprocess.run(
            ["git", "-c", f"safe.directory={root}", "-c", "core.fsmonitor=false",
             "--no-optional-locks", *args],
            cwd=EXTENSION_DIR, env=env, capture_output=True, text=True,
        )
    except OSError:  # no git
        return None
    return result.stdout if result.returncode == 0 else None
