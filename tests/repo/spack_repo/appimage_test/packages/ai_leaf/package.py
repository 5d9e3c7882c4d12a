from spack.package import *


class AiLeaf(Package):
    """Bottom of the test library chain: a versioned shared library with SONAME
    symlinks, plus the files the stage must prune (header, static library,
    pkg-config, CMake config, man page) and a data file it must keep."""

    homepage = "https://example.invalid/ai-leaf"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        cc = Executable(spack_cc)
        src = join_path(self.package_dir, "leaf.c")
        mkdirp(prefix.lib, prefix.include, prefix.share.leaf, prefix.share.man.man1)
        mkdirp(join_path(prefix.lib, "pkgconfig"), join_path(prefix.lib, "cmake", "leaf"))
        cc("-shared", "-fPIC", "-Wl,-soname,libleaf.so.1", "-o",
           join_path(prefix.lib, "libleaf.so.1.0.0"), src)
        symlink("libleaf.so.1.0.0", join_path(prefix.lib, "libleaf.so.1"))
        symlink("libleaf.so.1", join_path(prefix.lib, "libleaf.so"))
        cc("-c", "-fPIC", "-o", "leaf.o", src)
        Executable("ar")("rcs", join_path(prefix.lib, "libleaf.a"), "leaf.o")
        with open(join_path(prefix.include, "leaf.h"), "w") as f:
            f.write("const char *leaf(void);\n")
        with open(join_path(prefix.share.leaf, "leaf.dat"), "w") as f:
            f.write("leaf data\n")
        with open(join_path(prefix.share.man.man1, "leaf.1"), "w") as f:
            f.write(".TH LEAF 1\n")
        with open(join_path(prefix.lib, "pkgconfig", "leaf.pc"), "w") as f:
            f.write(f"prefix={prefix}\nName: leaf\n")
        with open(join_path(prefix.lib, "cmake", "leaf", "leafConfig.cmake"), "w") as f:
            f.write(f"set(LEAF_PREFIX {prefix})\n")
