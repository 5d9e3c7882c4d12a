"""The run environment of the bundled specs, as ``spack load`` would set it.

Packages tell Spack what their users need in the environment (``setup_run_environment``,
and a dependency's ``setup_dependent_run_environment``: CPython puts each extension's
``site-packages`` on ``PYTHONPATH``, Perl its modules on ``PERL5LIB``, ...). The image
applies the same modifications, computed by Spack's own ``SetupContext`` in the run
context, with every bundled store prefix replaced by ``${APPDIR}/opt/<label>`` (AppRun
substitutes the mount point before running the entry). The build environment is never
used.

A path element that names a store path with nothing in the image (a prefix that is not
bundled, a ``lib64`` that does not exist) is dropped, so no entry ever looks into the
store, and so is a value that is one path into the image naming nothing there (Open MPI's
``MPICC``: the compiler wrapper is not bundled); a plain value that still names the store
after the rewrite is dropped too, and reported (:attr:`RunEnvironment.dropped`).

Only what AppRun can do in order is kept: set, unset, prepend and append (path
variables, with their separator). Spack's other operations (remove a path element,
deduplicate) are about an interactive shell's existing state, not an image's.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

#: What AppRun replaces with the AppDir's path in a value.
APPDIR = "${APPDIR}"


@dataclass
class RunEnvironment:
    #: (operation, variable, value, separator): operation is set, unset, prepend or append
    changes: List[Tuple[str, str, str, str]] = field(default_factory=list)
    #: (variable, value) Spack would set that names the store outside the image, or that
    #: the entry table cannot hold (a tab or newline)
    dropped: List[Tuple[str, str]] = field(default_factory=list)

    def as_records(self) -> List[dict]:
        return [dict(zip(("op", "name", "value", "separator"), c)) for c in self.changes]


def _rewriter(layout, staged: set):
    """host path -> AppDir path (with ${APPDIR}), or None when the image lacks it."""

    def rewrite(path: str):
        owner = layout.owner(os.path.realpath(path) if os.path.exists(path) else path)
        if not owner.is_spec:
            return None
        dest = layout.dest(path)
        if dest.rstrip(os.sep) not in staged:
            return None
        return os.path.normpath(os.path.join(APPDIR, dest))

    return rewrite


def staged_directories(files: Iterable[str]) -> set:
    """Every directory that holds a staged file, at any depth (AppDir-relative)."""
    dirs = set()
    for dest in files:
        parent = os.path.dirname(dest)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return dirs


def compute(specs: Iterable, layout, staged_files: Iterable[str], store_root: str,
            relocating: Iterable[Tuple[str, object]] = ()) -> RunEnvironment:
    """The run environment of ``specs`` (the entries' and the bundled extensions'),
    rewritten into the image, then each (variable, spec) of ``relocating`` set to the
    spec's directory in the image (``extras.RELOCATING_VARIABLES``)."""
    import spack.build_environment
    import spack.util.environment as environment
    from spack.context import Context

    specs = list(specs)
    result = RunEnvironment()
    if not specs:  # a tree that is not a Spack installation (the benchmarks)
        return result
    context = spack.build_environment.SetupContext(*specs, context=Context.RUN)
    context.set_all_package_py_globals()
    staged = set(staged_files) | staged_directories(staged_files)
    rewrite = _rewriter(layout, staged)
    prefixes = specs_prefixes(specs, layout)
    path_ops = {environment.PrependPath: "prepend", environment.AppendPath: "append"}
    for change in context.get_env_modifications().env_modifications:
        kind = type(change)
        if any(c in f"{change.name}{getattr(change, 'value', '')}" for c in "\t\n"):
            result.dropped.append((change.name, str(getattr(change, "value", ""))))
            continue  # the entry table is one line per change, tab-separated
        if kind in path_ops:
            value = rewrite(change.value)
            if value is not None:
                result.changes.append((path_ops[kind], change.name, value, change.separator))
        elif kind in (environment.SetEnv, environment.SetPath):
            separator = getattr(change, "separator", os.pathsep)
            value = change.value
            if isinstance(value, (list, tuple)):
                value = separator.join(value)
            value = _rewrite_prefixes(str(value), prefixes)
            if store_root in value:
                result.dropped.append((change.name, value))
            elif not _names_missing_file(value, staged):
                result.changes.append(("set", change.name, value, separator))
        elif kind is environment.UnsetEnv:
            result.changes.append(("unset", change.name, "", ""))
    for variable, spec in relocating:
        prefix = os.path.realpath(spec.prefix)
        result.changes.append(("set", variable, os.path.normpath(
            os.path.join(APPDIR, layout.dest(prefix))), ""))
    return result


def specs_prefixes(specs: Iterable, layout) -> Dict[str, str]:
    """store prefix -> ``${APPDIR}/opt/<label>`` for the non-external specs given and
    their link/run dependencies."""
    import spack.traverse

    return {
        os.path.realpath(s.prefix): os.path.normpath(
            os.path.join(APPDIR, layout.dest(os.path.realpath(s.prefix))))
        for s in spack.traverse.traverse_nodes(list(specs), deptype=("link", "run"))
        if not s.external
    }


def _names_missing_file(value: str, staged: set) -> bool:
    """Whether ``value`` is one path into the image that the image does not hold (such as
    Open MPI's ``MPICC``, naming a compiler wrapper that no entry needs)."""
    top = APPDIR + os.sep
    return value.startswith(top) and value[len(top):].rstrip(os.sep) not in staged


def _rewrite_prefixes(value: str, prefixes: Dict[str, str]) -> str:
    for prefix in sorted(prefixes, key=len, reverse=True):
        value = value.replace(prefix, prefixes[prefix])
    return value
