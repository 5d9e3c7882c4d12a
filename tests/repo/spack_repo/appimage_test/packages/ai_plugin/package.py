from spack.package import *


class AiPlugin(Package):
    """A program that dlopens lib/plugins/libplug.so, which no DT_NEEDED names; the plugin
    itself links ai-leaf, so its own closure must come along when it is included."""

    homepage = "https://example.invalid/ai-plugin"
    has_code = False
    version("1.0")
    depends_on("c", type="build")
    depends_on("ai-leaf")

    def install(self, spec, prefix):
        plugins = join_path(prefix.lib, "plugins")
        mkdirp(prefix.bin, plugins)
        cc = Executable(spack_cc)
        cc("-shared", "-fPIC", "-o", join_path(plugins, "libplug.so"),
           join_path(self.package_dir, "plugin.c"), f"-L{spec['ai-leaf'].prefix.lib}", "-lleaf")
        cc("-o", join_path(prefix.bin, "plugin-host"), join_path(self.package_dir, "host.c"), "-ldl")
