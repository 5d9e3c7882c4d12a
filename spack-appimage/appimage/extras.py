"""Files the ELF closure cannot see: plugins a program loads with dlopen, and files the
user names.

``--include SPEC:GLOB`` takes files matching GLOB (relative to the prefix of the
environment's spec matching SPEC; ``**`` spans directories). Shared libraries among them
get their own closure, as if loaded by dlopen; other files are bundled as they are.

Plugin rules add what a bundled package is known to dlopen, by package name
(:data:`PLUGIN_RULES`): the component directories of MPI implementations and of the
libraries they load them through. A rule applies when the spec is bundled, i.e. when any
of its files is in the closure (an external MPI stays on the host with its plugins).
Interpreters dlopen the shared objects of their library and module trees: those of a
bundled interpreter and of its extensions come in the same way.

:func:`resolve` runs the closure over the entries and all of these until nothing new
comes in: a plugin's closure may bundle a spec whose rules add more.
"""

import glob
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

from . import installed, interpreters
from .closure import Resolver
from .errors import AppImageError

#: package name -> prefix-relative globs of what it dlopens, or execs by path
PLUGIN_RULES: Dict[str, Tuple[str, ...]] = {
    # Open MPI's MCA components (and those of its bundled PMIx/PRRTE), dlopened by
    # libopen-pal's component repository at MPI_Init; the daemons a singleton MPI_Init
    # or mpirun starts from the install prefix (orted in 4.x, prted in 5.x) and mpirun.
    "openmpi": ("lib/openmpi/*.so", "lib/pmix/*.so", "lib/prte/*.so", "bin/orted",
                "bin/orterun", "bin/mpirun", "bin/mpiexec", "bin/prted", "bin/prterun",
                "bin/prte"),
    "pmix": ("lib/pmix/*.so",),
    "prrte": ("lib/prte/*.so", "bin/prted", "bin/prterun", "bin/prte"),
    # UCX transports (libuct_*.so) and libfabric providers (lib*-fi.so), loaded by name.
    "ucx": ("lib/ucx/*.so*",),
    "libfabric": ("lib/libfabric/*.so",),
    # hwloc's optional backends (only when built with plugins).
    "hwloc": ("lib/hwloc/*.so",),
}


#: package name -> variables that tell it where it is installed (set by AppRun to the
#: spec's directory in the image: without them Open MPI looks for its help files,
#: components and daemons under the store prefix compiled into it)
RELOCATING_VARIABLES: Dict[str, Tuple[str, ...]] = {
    "openmpi": ("OPAL_PREFIX",),
    "pmix": ("PMIX_INSTALL_PREFIX",),
    "prrte": ("PRTE_PREFIX",),
}


def relocating_variables(specs: Iterable) -> List[Tuple[str, object]]:
    """(variable, spec) to set for the bundled ``specs`` that honour one."""
    return [(variable, spec) for spec in sorted(specs, key=lambda s: s.name)
            if not spec.external for variable in RELOCATING_VARIABLES.get(spec.name, ())]


@dataclass(frozen=True)
class Included:
    spec: object  # spack.spec.Spec
    path: str
    #: why: "--include ..." or "plugin rule for NAME"
    reason: str


def _files(spec, patterns: Sequence[str], reason: str) -> List[Included]:
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(spec.prefix, pattern), recursive=True)):
            if os.path.isdir(path) and not os.path.islink(path):
                for root, _, names in os.walk(path):
                    found += [Included(spec, os.path.join(root, n), reason) for n in sorted(names)]
            else:
                found.append(Included(spec, path, reason))
    return found


def requested(includes: Sequence[str], nodes: Sequence) -> List[Included]:
    """The files of ``--include SPEC:GLOB`` arguments."""
    result = []
    for request in includes:
        constraint, sep, pattern = request.partition(":")
        if not sep or not constraint or not pattern or os.path.isabs(pattern) \
                or ".." in pattern.split("/"):
            raise AppImageError(
                f"--include {request}: expected SPEC:GLOB with a prefix-relative GLOB",
                "e.g. --include openmpi:lib/openmpi/*.so",
            )
        try:
            query = installed.spec_query(constraint)
        except ValueError as e:
            raise AppImageError(f"--include {request}: {constraint!r} is not a spec ({e})")
        specs = installed.matching([s for s in nodes if not s.external], query)
        if len(specs) != 1:
            raise AppImageError(
                f"--include {request}: {len(specs) or 'no'} installed specs of the "
                f"environment match {constraint}"
                + ("" if specs else f" ({installed.NOT_BY_VIRTUAL})"),
                "name exactly one link/run dependency of the environment (add @version or "
                "/hash)",
            )
        files = _files(specs[0], [pattern], f"--include {request}")
        if not files:
            raise AppImageError(
                f"--include {request}: nothing matches {pattern} in {specs[0].prefix}",
                "check the path with ls in that prefix",
            )
        result += files
    return result


def by_rule(specs: Iterable, stacks: Dict) -> List[Included]:
    """Plugin files of the bundled ``specs`` that have a rule, and the shared objects in
    the trees of interpreted ``stacks`` (spec -> its interpreter, see :mod:`interpreters`)."""
    plugins = [
        item
        for spec in specs
        if not spec.external and spec.name in PLUGIN_RULES
        for item in _files(spec, PLUGIN_RULES[spec.name], f"plugin rule for {spec.name}")
    ]
    return plugins + [
        item
        for spec, interpreter in stacks.items()
        for item in _files(spec, interpreters.shared_object_globs(spec, interpreter),
                           f"module of {interpreter.name}")
    ]


def resolve(found, nodes, layout, policy, include, rules, left_out):
    """The closure of the entries, then of the included files, of the plugins that rules
    add for the specs bundled so far, and of the shared objects of bundled interpreters
    and their extensions, until nothing new comes in. Returns it with every included
    file, the interpreted stacks (spec -> interpreter) and ``rules`` with what those
    interpreters never need."""
    resolver = Resolver(policy)
    for entry in found:
        resolver.add_executable(entry.program)
    included = requested(include, nodes)
    seen = set()
    while True:
        for item in included:
            if item.path not in seen:
                seen.add(item.path)
                parsed = resolver.parse(os.path.realpath(item.path))
                if parsed is not None and parsed.shared:
                    resolver.add_library(item.path)
                elif parsed is not None and parsed.interpreter:  # a program it execs
                    resolver.add_executable(item.path)
        bundled = {layout.owner(p).spec for p in resolver.closure.paths()} - {None}
        stacks = interpreters.stacks(bundled, nodes, left_out)
        active = rules.with_never_needed(interpreters.never_needed_in(stacks))
        new = [i for i in by_rule(bundled, stacks)
               if i.path not in seen and not active.leaves_out(i.path, i.spec.prefix)]
        if not new:
            interpreters.check(stacks, {i.spec for i in included})
            return resolver.closure, included, stacks, active
        included += new
