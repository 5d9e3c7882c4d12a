"""Open MPI 4.1.4 from Debian's orig tarball, upstream's ``.tar.xz`` (the recipe
checksums the ``.tar.bz2``).

The builtin recipe also applies a patch downloaded from GitHub to 4.1.4 (ompi commit
8e6d9ba: reductions on unsigned long integers). These machines cannot download it, and
the tests reduce nothing, so this overlay leaves that one patch out.
"""

try:
    from spack_repo.builtin.packages.openmpi.package import Openmpi as BuiltinOpenmpi
except ImportError:  # Spack < 1.0: the legacy repository layout
    from spack.pkg.builtin.openmpi import Openmpi as BuiltinOpenmpi

from spack.package import *


class Openmpi(BuiltinOpenmpi):
    version(
        "4.1.4",
        sha256="ddaee7dbdb01eb4fab1fda5b5e03e8bbff026711806c095c1f39bb410f99f263",
        url="https://download.open-mpi.org/release/open-mpi/v4.1/openmpi-4.1.4.tar.xz",
    )


Openmpi.patches = {
    when: [p for p in patches if "github.com" not in getattr(p, "url", "")]
    for when, patches in BuiltinOpenmpi.patches.items()
}
