"""Installed specs, looked up by package name or matched against a user's spec.

``Database.query("NAME")`` parses NAME as an abstract spec and matches every record with
``satisfies``, which asks the package repository whether NAME is virtual: on a fresh user
cache (every new user of a shared site) that first builds the provider, tag and patch
indexes of the whole builtin repository, a silent minute (53-79 s measured on 2 cores).
The tools the extension looks for (mksquashfs, squashfuse, libfuse) are never virtual, so
the records' names are compared instead: no repository is read. ``Spec.satisfies`` does
the same for any two specs of different names, so the specs a user names (``--entry
NAME=SPEC``, ``--include SPEC:GLOB``) are matched by :func:`matching`.
"""

from typing import List, Sequence

from .compat import tty


def named(name: str) -> List:
    """The installed specs called ``name``, newest version first. An unreadable database
    yields none (with a debug line): the caller then looks on PATH."""
    import spack.error
    import spack.store

    try:
        records = spack.store.STORE.db.query(
            installed=True, predicate_fn=lambda record: record.spec.name == name)
    except (OSError, spack.error.SpackError) as e:
        tty.debug(f"cannot read the store's database: {e}")
        return []
    return sorted(records, key=lambda s: s.version, reverse=True)


def spec_query(text: str):
    """``text`` parsed as an abstract spec; ValueError with the parser's first line (its
    next lines draw a caret under the text, which would break a one-line error)."""
    import spack.spec

    try:
        return spack.spec.Spec(text)
    except Exception as e:
        raise ValueError(str(e).splitlines()[0].rstrip(":")) from e


#: Said when no spec matches: why a virtual (``mpi``) never does (:func:`matching`).
NOT_BY_VIRTUAL = "specs are matched by their own name: for a virtual, name its provider"


def matching(specs: Sequence, query) -> List:
    """The specs among ``specs`` (concrete, of the environment) that satisfy the abstract
    spec ``query``. A spec of another name is never one: ``satisfies`` would ask the
    repository whether ``query`` names a virtual that it provides (the index build above,
    measured at 95 s on a fresh cache for ``--entry ai-hello=ai-hello``); a user picks a
    spec of the environment by its own name, version or hash."""
    return [s for s in specs if (not query.name or s.name == query.name) and s.satisfies(query)]
