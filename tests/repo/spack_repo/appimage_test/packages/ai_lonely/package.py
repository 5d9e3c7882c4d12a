from spack.package import *


class AiLonely(Package):
    """A program no other test environment installs: for the not-installed and
    --install paths."""

    homepage = "https://example.invalid/ai-lonely"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        Executable(spack_cc)("-o", join_path(prefix.bin, "ai-lonely"),
                             join_path(self.package_dir, "lonely.c"))
