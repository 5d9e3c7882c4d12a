from spack.package import *


class AiOrigin(Package):
    """A library that finds its private library through its own $ORIGIN RPATH
    (lib/liborigin.so -> lib/private/libpriv.so)."""

    homepage = "https://example.invalid/ai-origin"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        cc = Executable(spack_cc)
        private = join_path(prefix.lib, "private")
        mkdirp(prefix.bin, private)
        cc("-shared", "-fPIC", "-Wl,-soname,libpriv.so", "-o", join_path(private, "libpriv.so"),
           join_path(self.package_dir, "priv.c"))
        cc("-shared", "-fPIC", "-Wl,-soname,liborigin.so", "-o",
           join_path(prefix.lib, "liborigin.so"), join_path(self.package_dir, "origin.c"),
           f"-L{private}", "-lpriv", "-Wl,-rpath,$ORIGIN/private")
        cc("-o", join_path(prefix.bin, "ai-origin"), join_path(self.package_dir, "app.c"),
           f"-L{prefix.lib}", "-lorigin")
