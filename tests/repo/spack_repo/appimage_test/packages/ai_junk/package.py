import os

from spack.package import *


class AiJunk(Package):
    """A bin/ as packages leave it: two programs (an ELF file, a #! script) and a link to
    one, among what is no program: a libtool .la file with the executable bit, an ELF
    file without it, a directory, a dangling link and a link out of the store."""

    homepage = "https://example.invalid/ai-junk"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        mkdirp(prefix.bin.join("plugins.d"))
        program = join_path(prefix.bin, "ai-junk")
        Executable(spack_cc)("-o", program, join_path(self.package_dir, "junk.c"))
        with open(join_path(prefix.bin, "ai-junk-config"), "w") as f:
            f.write("#!/bin/sh\necho \"--prefix $(dirname \"$0\")/..\"\n")
        os.chmod(join_path(prefix.bin, "ai-junk-config"), 0o755)
        symlink("ai-junk", join_path(prefix.bin, "run-junk"))
        with open(join_path(prefix.bin, "libjunk.la"), "w") as f:
            f.write("# libjunk.la - a libtool library file\ndlname='libjunk.so.1'\n")
        os.chmod(join_path(prefix.bin, "libjunk.la"), 0o755)
        copy(program, join_path(prefix.bin, "not-runnable"))
        os.chmod(join_path(prefix.bin, "not-runnable"), 0o644)
        symlink("nowhere", join_path(prefix.bin, "dangling"))
        symlink("/bin/true", join_path(prefix.bin, "host-true"))
