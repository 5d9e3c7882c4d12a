from spack.package import *


class AiSide(Package):
    """A second, independent shared library linked by ai-hello."""

    homepage = "https://example.invalid/ai-side"
    has_code = False
    version("2.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        mkdirp(prefix.lib)
        Executable(spack_cc)(
            "-shared", "-fPIC", "-Wl,-soname,libside.so", "-o",
            join_path(prefix.lib, "libside.so"), join_path(self.package_dir, "side.c"),
        )
