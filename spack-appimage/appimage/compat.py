"""The Spack APIs that moved between the releases the extension runs on (0.23 to 1.x).

Everything that differs is named here once, so the other modules import one name
whatever the Spack:

* ``tty`` and ``visit_directory_tree``: ``spack.llnl.util`` since Spack 1.0, the
  top-level ``llnl.util`` before;
* ``ResolveSharedElfLibDepsVisitor``: ``spack.verify_libraries`` since 1.0.0-alpha.4,
  ``None`` before (the audit then uses the closure's own ELF reader);
* ``node_compilers``: the compilers of a ``spec.json`` node, recorded as ``c``/``cxx``/
  ``fortran`` dependency edges since 1.0 and as a ``compiler`` node attribute before;
* ``configured_c_compilers``: ``packages:`` compiler externals since 1.0,
  ``compilers:`` entries (compilers.yaml) before;
* ``archspec_cpu``: the archspec Spack carries, ``spack.vendor.archspec`` since 1.0,
  the top-level ``archspec`` (lib/spack/external) before;
* ``get_mark_from_yaml_data``: where a configuration value was set, in
  ``spack.util.spack_yaml`` since 1.0, in ``spack.config`` before.

Older releases lack or shape differently what the pipeline reads (the RUN
``SetupContext``, ``spack.context``), so the command refuses them
(:func:`require_supported_spack`). The refusal waits for the command to run: importing
the module must keep working there, or ``spack help --all`` would fail at a site whose
shared configuration lists the extension.
"""

from typing import Dict, Iterator, List

import spack

from .errors import AppImageError

#: The oldest Spack the extension supports.
OLDEST = (0, 23)


def require_supported_spack() -> None:
    """Raise a one-line error on a Spack older than :data:`OLDEST`."""
    major, minor = spack.spack_version_info[:2]
    if (major, minor) < OLDEST:
        raise AppImageError(
            f"spack appimage needs Spack >= {OLDEST[0]}.{OLDEST[1]} (this is {major}.{minor}.x)"
        )


try:
    import spack.llnl.util.tty as tty
    from spack.llnl.util.filesystem import visit_directory_tree
except ImportError:  # Spack < 1.0
    import llnl.util.tty as tty  # type: ignore[no-redef]
    from llnl.util.filesystem import visit_directory_tree  # type: ignore[no-redef]

try:
    import spack.vendor.archspec.cpu as archspec_cpu
except ImportError:  # Spack < 1.0
    import archspec.cpu as archspec_cpu  # type: ignore[no-redef]

try:
    from spack.util.spack_yaml import get_mark_from_yaml_data
except ImportError:  # Spack < 1.0
    from spack.config import get_mark_from_yaml_data  # type: ignore[no-redef]

try:
    from spack.verify_libraries import ResolveSharedElfLibDepsVisitor
except ImportError:  # Spack < 1.0.0-alpha.4
    ResolveSharedElfLibDepsVisitor = None  # type: ignore[assignment,misc]

#: Virtual packages whose provider is the compiler of a node (Spack >= 1.0).
COMPILER_VIRTUALS = ("c", "cxx", "fortran")

__all__ = ["require_supported_spack", "tty", "visit_directory_tree", "archspec_cpu",
           "get_mark_from_yaml_data",
           "ResolveSharedElfLibDepsVisitor", "node_compilers", "configured_c_compilers"]


def node_compilers(node: dict, nodes: Dict[str, dict]) -> List[str]:
    """``name@version`` of each compiler that built ``node`` (a ``spec.json`` node;
    ``nodes`` maps hash -> node of the same file)."""
    compilers = []
    for dep in node.get("dependencies", []):
        if set(dep.get("parameters", {}).get("virtuals", ())) & set(COMPILER_VIRTUALS):
            version = nodes.get(dep["hash"], {}).get("version", "?")
            compilers.append(f"{dep['name']}@{version}")
    attribute = node.get("compiler")  # Spack < 1.0: {"name": "gcc", "version": "=12.2.0"}
    if isinstance(attribute, dict) and attribute.get("name"):
        compilers.append(f"{attribute['name']}@{str(attribute.get('version', '?')).lstrip('=')}")
    return sorted(set(compilers))


def configured_c_compilers() -> Iterator[str]:
    """The C compilers of Spack's configuration, in its order of preference."""
    import spack.config

    for package in (spack.config.get("packages") or {}).values():
        for external in (package or {}).get("externals") or []:
            extra = external.get("extra_attributes") or {}
            cc = (extra.get("compilers") or {}).get("c")
            if cc:
                yield cc
    for entry in spack.config.get("compilers") or []:  # Spack < 1.0: compilers.yaml
        cc = ((entry or {}).get("compiler") or {}).get("paths", {}).get("cc")
        if cc:
            yield cc
