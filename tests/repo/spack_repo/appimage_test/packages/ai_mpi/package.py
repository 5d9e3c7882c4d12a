from spack.package import *


class AiMpi(Package):
    """An MPI program (rank, size, an allreduce), built with the MPI of the environment:
    in the tests, Debian's OpenMPI registered as a non-buildable external."""

    homepage = "https://example.invalid/ai-mpi"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("mpi")

    def install(self, spec, prefix):
        mkdirp(prefix.bin)
        Executable(spec["mpi"].mpicc)("-o", join_path(prefix.bin, "mpi-hello"),
                                      join_path(self.package_dir, "mpi_hello.c"))
