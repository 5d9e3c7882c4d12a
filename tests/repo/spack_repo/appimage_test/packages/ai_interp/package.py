from spack.package import *


class AiInterp(Package):
    """A tiny script interpreter (bin/ai-interp)."""

    homepage = "https://example.invalid/ai-interp"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        Executable(spack_cc)("-o", join_path(prefix.bin, "ai-interp"),
                             join_path(self.package_dir, "interp.c"))
