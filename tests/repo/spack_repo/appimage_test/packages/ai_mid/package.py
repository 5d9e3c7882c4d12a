from spack.package import *


class AiMid(Package):
    """A shared library that links ai-leaf: the second level of the chain."""

    homepage = "https://example.invalid/ai-mid"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("ai-leaf")

    def install(self, spec, prefix):
        mkdirp(prefix.lib)
        Executable(spack_cc)(
            "-shared", "-fPIC", "-Wl,-soname,libmid.so.1", "-o",
            join_path(prefix.lib, "libmid.so.1"), join_path(self.package_dir, "mid.c"),
            f"-L{spec['ai-leaf'].prefix.lib}", "-lleaf",
        )
        symlink("libmid.so.1", join_path(prefix.lib, "libmid.so"))
