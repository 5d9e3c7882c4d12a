from spack.package import *


class AiDatadir(Package):
    """A program that finds its data through absolute paths compiled in (its own
    share/ai-datadir, and ai-leaf's share/leaf), the way many simulation codes find
    basis sets or kernels: relocation cannot change them. It links libleaf, so ai-leaf
    is bundled too."""

    homepage = "https://example.invalid/ai-datadir"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("ai-leaf")

    def install(self, spec, prefix):
        data = join_path(prefix.share, "ai-datadir")
        mkdirp(prefix.bin, data)
        with open(join_path(data, "basis.txt"), "w") as f:
            f.write(f"basis set of ai-datadir {spec.dag_hash(7)}\n")
        leaf_data = join_path(spec["ai-leaf"].prefix.share.leaf, "leaf.dat")
        Executable(spack_cc)(
            "-o", join_path(prefix.bin, "ai-datadir"),
            join_path(self.package_dir, "datadir.c"),
            f'-DDATADIR="{data}"', f'-DLEAF_DATA="{leaf_data}"',
            f"-L{spec['ai-leaf'].prefix.lib}", "-lleaf",
        )
