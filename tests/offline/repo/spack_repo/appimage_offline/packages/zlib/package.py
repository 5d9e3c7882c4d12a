"""zlib 1.2.13 from Debian's repacked orig tarball (``+dfsg``: other bytes, same code)."""

try:
    from spack_repo.builtin.packages.zlib.package import GenericBuilder, MakefileBuilder  # noqa: F401
    from spack_repo.builtin.packages.zlib.package import Zlib as BuiltinZlib
except ImportError:  # Spack < 1.0: the legacy repository layout
    from spack.pkg.builtin.zlib import GenericBuilder, MakefileBuilder  # noqa: F401
    from spack.pkg.builtin.zlib import Zlib as BuiltinZlib

from spack.package import *


class Zlib(BuiltinZlib):
    version(
        "1.2.13",
        sha256="71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
        url="https://zlib.net/fossils/zlib-1.2.13.tar.bz2",
    )
