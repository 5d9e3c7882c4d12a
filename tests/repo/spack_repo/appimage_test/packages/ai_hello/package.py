import os

from spack.package import *


class AiHello(Package):
    """An executable linked to ai-mid (which links ai-leaf) and ai-side, reading a
    data file relative to itself. Also installs a second entry, hello-twin, and the
    things a careless image would ship or trip on: an executable that is neither ELF
    nor script, a symlink out of the prefix, a broken and an escaping data symlink,
    setuid and world-writable data, and a secret in the prefix's .spack/."""

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
        with open(join_path(prefix.bin, "data-exec"), "w") as f:
            f.write("plain text, executable\n")
        os.chmod(join_path(prefix.bin, "data-exec"), 0o755)
        symlink("/bin/true", join_path(prefix.bin, "escape"))
        share = prefix.share.join("ai-hello")
        symlink("nowhere", join_path(share, "broken"))
        symlink("/etc/hostname", join_path(share, "outside"))
        for name, mode in (("setuid-data", 0o4755), ("open-data", 0o666)):
            with open(join_path(share, name), "w") as f:
                f.write(name + "\n")
            os.chmod(join_path(share, name), mode)
        mkdirp(join_path(prefix, ".spack"))
        with open(join_path(prefix, ".spack", "canary-secret.txt"), "w") as f:
            f.write("SECRET_TOKEN=canary-7f3a9c\n")
