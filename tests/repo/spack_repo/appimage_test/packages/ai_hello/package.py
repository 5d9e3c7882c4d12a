from spack_repo.builtin.build_systems.generic import Package

from spack.package import *


class AiHello(Package):
    """An executable linked to ai-mid (which links ai-leaf) and ai-side, reading a
    data file relative to itself. Also installs a second entry, hello-twin."""

    homepage = "https://example.invalid/ai-hello"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("ai-mid")
    depends_on("ai-side")

    def install(self, spec, prefix):
        mkdirp(prefix.bin, prefix.share.join("ai-hello"))
        Executable(spack_cc)(
            "-o", join_path(prefix.bin, "ai-hello"), join_path(self.package_dir, "hello.c"),
            f"-L{spec['ai-mid'].prefix.lib}", f"-L{spec['ai-side'].prefix.lib}",
            "-lmid", "-lside",
        )
        symlink("ai-hello", join_path(prefix.bin, "hello-twin"))
        with open(join_path(prefix.share.join("ai-hello"), "greeting.txt"), "w") as f:
            f.write("bonjour\n")
        with open(join_path(prefix.bin, "not-executable"), "w") as f:
            f.write("data\n")
