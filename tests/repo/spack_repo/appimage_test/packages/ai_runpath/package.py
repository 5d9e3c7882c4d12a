from spack.package import *


class AiRunpath(Package):
    """An executable whose only search path is a DT_RUNPATH to ai-leaf. Spack's
    compiler wrapper always writes DT_RPATH, so patchelf (which writes DT_RUNPATH
    unless told --force-rpath) replaces it after linking."""

    homepage = "https://example.invalid/ai-runpath"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("ai-leaf")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        leaf_lib = spec["ai-leaf"].prefix.lib
        exe = join_path(prefix.bin, "ai-runpath")
        Executable(spack_cc)("-o", exe, join_path(self.package_dir, "app.c"), f"-L{leaf_lib}", "-lleaf")
        which("patchelf", required=True)("--set-rpath", leaf_lib, exe)
