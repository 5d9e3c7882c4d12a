from spack.package import *


class AiGpu(Package):
    """A program linked to a library named like the CUDA driver (libcuda.so.1), which the
    host policy keeps on the host. The library is installed in lib/driver/ (in the
    program's RPATH, so --bundle-lib finds it) and the tests put that directory on, or
    leave it off, the loader's path when running the image."""

    homepage = "https://example.invalid/ai-gpu"
    has_code = False
    version("1.0")
    depends_on("c", type="build")

    def install(self, spec, prefix):
        driver = join_path(prefix.lib, "driver")
        mkdirp(prefix.bin, driver)
        cc = Executable(spack_cc)
        cc("-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
           join_path(driver, "libcuda.so.1"), join_path(self.package_dir, "driver.c"))
        cc("-o", join_path(prefix.bin, "gpu-app"), join_path(self.package_dir, "app.c"),
           join_path(driver, "libcuda.so.1"), f"-Wl,-rpath,{driver}")
