"""Installed specs of the store, looked up by package name.

``Database.query("NAME")`` parses NAME as an abstract spec and matches every record with
``satisfies``, which asks the package repository whether NAME is virtual: on a fresh user
cache (every new user of a shared site) that first builds the provider, tag and patch
indexes of the whole builtin repository, a silent minute (53-79 s measured on 2 cores).
The tools the extension looks for (mksquashfs, squashfuse, libfuse) are never virtual, so
the records' names are compared instead: no repository is read.
"""

from typing import List

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
