from spack.package import *


class AiCxx(Package):
    """A C++ executable: needs libstdc++ and libgcc_s from gcc-runtime. Also ships
    an executable named ai-hello, so that name is ambiguous in the environment."""

    homepage = "https://example.invalid/ai-cxx"
    has_code = False
    version("1.0")
    depends_on("cxx", type="build")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        src = join_path(self.package_dir, "cxx.cpp")
        Executable(spack_cxx)("-o", join_path(prefix.bin, "ai-cxx"), src)
        Executable(spack_cxx)("-o", join_path(prefix.bin, "ai-hello"), src)
