"""xz 5.4.1 from Debian's orig tarball, upstream's ``.tar.xz`` (the recipe checksums the
``.tar.bz2``)."""

try:
    from spack_repo.builtin.packages.xz.package import AutotoolsBuilder  # noqa: F401
    from spack_repo.builtin.packages.xz.package import Xz as BuiltinXz
except ImportError:  # Spack < 1.0: the legacy repository layout
    from spack.pkg.builtin.xz import AutotoolsBuilder  # noqa: F401
    from spack.pkg.builtin.xz import Xz as BuiltinXz

from spack.package import *


class Xz(BuiltinXz):
    version(
        "5.4.1",
        sha256="5d9827aa1875b21c288f78864bb26d2650b436ea8d2cad364e4921eb6266a5a5",
        url="https://tukaani.org/xz/xz-5.4.1.tar.xz",
    )
