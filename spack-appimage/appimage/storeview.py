"""The store view: whether an image shows its bundled prefixes at their store paths.

Relocation makes RPATHs, store shebangs and the interpreters' trees work from anywhere,
but a path compiled into a program (Perl's ``@INC``, a code's data directory) or
written into its configuration still names the store (:mod:`leaks` finds those files).
AppRun can show every bundled prefix at its original store path, in a user and mount
namespace of the image's own (``apprun/store.h``), so those programs read the image's
files where they expect them, and not a different store that happens to sit at the
same path. Where the node refuses namespaces, the image runs as relocated.

Modes (``--store-view``, ``config:appimage:store_view``):

* ``auto`` (default): the view when a file of the image names the store;
* ``always``: the view for every image;
* ``never``: no view; the image is only relocated.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .layout import OPT, owner_label

MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class StoreView:
    mode: str
    #: (store prefix, AppDir-relative directory) per bundled spec; empty without the view
    mounts: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)
    #: the store's root: where the view may lay its read-only mirror on a node (AppRun
    #: refuses directories outside it that programs write into); None without the view
    root: Optional[str] = None

    @property
    def applies(self) -> bool:
        return bool(self.mounts)

    def summary(self) -> str:
        """One line for the dry run and the build."""
        if self.applies:
            return (f"{len(self.mounts)} bundled prefixes shown at their store paths "
                    f"(--store-view {self.mode}), where the node allows user namespaces")
        if self.mode == "never":
            return "store paths not shown (--store-view never): the image is relocated only"
        return "not needed: no file of the image names the store (--store-view auto)"

    def record(self) -> Dict:
        """The manifest's ``store_view``."""
        return {"mode": self.mode, "applies": self.applies, "root": self.root,
                "prefixes": [{"prefix": p, "path": d} for p, d in self.mounts]}

    def table_lines(self) -> List[Tuple[str, ...]]:
        """AppRun's ``store-root`` and ``store`` lines."""
        if not self.applies:
            return []
        return [("store-root", self.root)] + [
            ("store", prefix, directory) for prefix, directory in self.mounts]


def decide(mode: str, bundled: Sequence, store_paths: Dict[str, List[str]],
           store_root: str) -> StoreView:
    """The view of an image whose ``bundled`` specs (those with files in it), installed in
    ``store_root``, leave ``store_paths`` (:func:`leaks.find`) naming the store.
    Externals are not shown: their prefixes are the host's own directories."""
    specs = sorted((s for s in bundled if not s.external), key=lambda s: str(s.prefix))
    wanted = mode == "always" or (mode == "auto" and bool(store_paths))
    if not wanted or not specs:
        return StoreView(mode)
    return StoreView(mode, tuple((str(s.prefix), os.path.join(OPT, owner_label(s)))
                                 for s in specs), os.path.normpath(store_root))
