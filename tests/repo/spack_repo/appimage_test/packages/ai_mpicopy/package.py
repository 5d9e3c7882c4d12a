from spack.package import *


class AiMpicopy(Package):
    """An MPI program whose ranks exchange 4 MiB messages, which Open MPI copies between
    ranks of one node with a single-copy mechanism (CMA): the test that the ranks of an
    image in its store view may still read each other's memory."""

    homepage = "https://example.invalid/ai-mpicopy"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("mpi")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        Executable(spec["mpi"].mpicc)("-o", join_path(prefix.bin, "mpi-copy"),
                                      join_path(self.package_dir, "mpi_copy.c"))
