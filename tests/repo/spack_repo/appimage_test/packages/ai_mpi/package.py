from spack.package import *


class AiMpi(Package):
    """MPI programs built with the MPI of the environment (in the tests, Debian's OpenMPI
    registered as a non-buildable external): mpi-hello (rank, size, an allreduce) and
    mpi-copy (4 MiB messages between ranks, which Open MPI copies with CMA on one node)."""

    homepage = "https://example.invalid/ai-mpi"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("mpi")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        for program, source in (("mpi-hello", "mpi_hello.c"), ("mpi-copy", "mpi_copy.c")):
            Executable(spec["mpi"].mpicc)("-o", join_path(prefix.bin, program),
                                          join_path(self.package_dir, source))
