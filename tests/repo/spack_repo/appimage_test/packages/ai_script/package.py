import os

import spack.hooks.sbang

from spack.package import *


class AiScript(Package):
    """Scripts whose shebang points into the store at ai-interp: one plain, one in Spack's
    sbang form (a first line running sbang, the real shebang on the second); and one
    whose interpreter exists nowhere."""

    homepage = "https://example.invalid/ai-script"
    has_code = False
    version("1.0")
    depends_on("ai-interp", type=("build", "run"))

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        interp = join_path(spec["ai-interp"].prefix.bin, "ai-interp")
        plain = join_path(prefix.bin, "say-hello")
        with open(plain, "w") as f:
            f.write(f"#!{interp} -u\nhello from a script\n")
        sbang = join_path(prefix.bin, "say-sbang")
        with open(sbang, "w") as f:
            spack.hooks.sbang.install_sbang()
            sbang_path = spack.hooks.sbang.sbang_install_path()
            f.write(f"#!/bin/sh {sbang_path}\n#!{interp}\nvia sbang\n")
        nowhere = join_path(prefix.bin, "say-nowhere")
        with open(nowhere, "w") as f:
            f.write("#!/opt/nowhere/bin/tclsh\nputs nowhere\n")
        for path in (plain, sbang, nowhere):
            os.chmod(path, 0o755)
