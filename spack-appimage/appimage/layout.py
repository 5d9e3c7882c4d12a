"""Where each host file goes in the AppDir: one directory per spec.

``opt/<name>-<version>-<hash7>/`` holds the files of that spec at the same paths as in
its install prefix. Libraries that belong to no spec of the environment (found in the
host's system directories, and not kept on the host by the policy) go under
``opt/host/`` at their absolute path.

Keeping each prefix's layout intact is what makes a program's own relative lookups work
(``$exe/../share/<pkg>``, ``$ORIGIN/private`` RPATHs, plugin directories next to a
library), and it keeps two specs' files with the same name apart. A flat ``usr/bin`` +
``usr/lib`` (libtree 2.x) breaks both. The cost is one RPATH entry per dependency
directory instead of one ``$ORIGIN/../lib``.
"""

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

#: Where the per-spec directories live inside the AppDir.
OPT = "opt"

#: A host path's owner when no spec of the environment owns it.
HOST_LABEL = "host"


@dataclass(frozen=True)
class Owner:
    """An install prefix whose files keep their relative layout under ``opt/<label>``."""

    label: str
    prefix: str
    spec: Optional[object] = None  # spack.spec.Spec; None for the host

    @property
    def is_spec(self) -> bool:
        return self.spec is not None and not self.spec.external


HOST = Owner(HOST_LABEL, "/")


def owner_label(spec) -> str:
    return spec.format("{name}-{version}-{hash:7}").replace("/", "_").replace("=", "_")


class Layout:
    """Maps host paths to AppDir paths, by the spec that owns them."""

    def __init__(self, specs: Iterable):
        import spack.util.environment

        self._by_prefix: Dict[str, Owner] = {}
        # Specs built by Spack first: an external's prefix must not claim files under a
        # store prefix that happens to be nested in it. An external whose prefix is a
        # system directory (/usr: glibc, gettext, ...) owns none of the files there: a
        # library found in /usr/lib belongs to the host, not to whichever external came
        # first.
        for spec in sorted(specs, key=lambda s: bool(s.external)):
            prefix = os.path.realpath(spec.prefix)
            if spec.external and spack.util.environment.is_system_path(prefix):
                continue
            self._by_prefix.setdefault(prefix, Owner(owner_label(spec), prefix, spec))

    @classmethod
    def of_prefixes(cls, prefixes: Dict[str, str]) -> "Layout":
        """A layout of plain ``label -> prefix`` directories, for trees that are not Spack
        installations (the benchmarks' generated store)."""
        layout = cls([])
        for label, prefix in prefixes.items():
            real = os.path.realpath(prefix)
            layout._by_prefix[real] = Owner(label, real)
        return layout

    def owner(self, path: str) -> Owner:
        directory = path
        while True:
            if directory in self._by_prefix:
                return self._by_prefix[directory]
            parent = os.path.dirname(directory)
            if parent == directory:
                return HOST
            directory = parent

    def dest(self, path: str) -> str:
        """AppDir-relative location of the host ``path`` (its parent directories resolved)."""
        path = resolve_parent(path)
        owner = self.owner(path)
        return os.path.join(OPT, owner.label, os.path.relpath(path, owner.prefix))

    def specs_owning(self, paths: Iterable[str]) -> List:
        """The specs (externals bundled by policy included) that own any of ``paths``."""
        owners = {self.owner(path) for path in paths}
        return [o.spec for o in owners if o.spec is not None]


def owner_of_dest(dest: str) -> str:
    """The owner label of an AppDir path ``opt/<label>/...``."""
    return dest.split(os.sep)[1]


def resolve_parent(path: str) -> str:
    """``path`` with its parent directories' symlinks resolved, not its last component."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
