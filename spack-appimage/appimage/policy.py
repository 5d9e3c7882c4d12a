"""What stays on the host: the libraries an image must not bundle.

The policy is data (name patterns with the reason for each, and the prefixes of the
environment's external specs) that the closure consults; nothing it decides is coded
elsewhere. Host libraries are recorded in the image as requirements.

The glibc family has to come from the host: the loader (PT_INTERP) is the host's, and
libc, libm, libpthread, ... must match it exactly. The list is the glibc part of
``spack.verify_libraries.ALLOW_UNRESOLVED`` (Spack's own list of libraries outside its
control); the gcc runtime libraries in that list are deliberately *not* host libraries
here, because a program built by a newer gcc than the host's needs its own libstdc++.
"""

import fnmatch
import functools
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

GLIBC_FAMILY = (
    "ld-linux*.so.*",
    "ld64.so.*",
    "libanl.so.*",
    "libBrokenLocale.so.*",
    "libc.so.*",
    "libc_malloc_debug.so.*",
    "libdl.so.*",
    "libm.so.*",
    "libmemusage.so.*",
    "libmvec.so.*",
    "libnsl.so.*",
    "libnss_*.so.*",
    "libpcprofile.so.*",
    "libpthread.so.*",
    "libresolv.so.*",
    "librt.so.*",
    "libSegFault.so.*",
    "libthread_db.so.*",
    "libutil.so.*",
)

#: The kernel maps these into every process; no file exists for them.
VDSO = ("linux-vdso.so.*", "linux-gate.so.*", "linux-vdso64.so.*", "linux-vdso32.so.*")

#: User-space parts of GPU drivers: they must match the host's kernel module, so an image
#: takes them from the host. NVIDIA: the driver libraries of Apptainer's nvliblist.conf
#: (libcuda, libnvidia-*, libcudadebugger, libnvcuvid, libnvoptix); AMD: the thunk and DRM
#: libraries talking to the amdgpu/KFD kernel driver (libhsakmt, libdrm_amdgpu, as bound by
#: Apptainer's rocmliblist.conf); Intel: the Level Zero and OpenCL GPU drivers of
#: intel/compute-runtime (libze_intel_gpu, libigdrcl).
GPU_DRIVERS = (
    "libcuda.so*",
    "libcudadebugger.so*",
    "libnvidia-*.so*",
    "libnvcuvid.so*",
    "libnvoptix.so*",
    "libhsakmt.so*",
    "libdrm_amdgpu.so*",
    "libze_intel_gpu.so*",
    "libigdrcl.so*",
)


#: Debian's multiarch triplet of each architecture (its library directories' last part).
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
             "ppc64le": "powerpc64le-linux-gnu", "riscv64": "riscv64-linux-gnu",
             "s390x": "s390x-linux-gnu", "i686": "i386-linux-gnu",
             "armv7l": "arm-linux-gnueabihf"}


def loader_dirs(machine: str) -> Tuple[str, ...]:
    """The directories glibc's loader searches after ld.so.cache on hosts of
    ``machine``, in both conventions an image meets: lib64 (RHEL, SUSE) and Debian's
    multiarch. AppRun looks there before it reports a host library missing, so the list
    errs towards more directories: a false "missing" would stop a program that runs."""
    triplet = MULTIARCH.get(machine)
    multiarch = (f"/lib/{triplet}", f"/usr/lib/{triplet}") if triplet else ()
    return ("/lib64", "/usr/lib64") + multiarch + ("/lib", "/usr/lib")


@functools.lru_cache(maxsize=None)
def _regex(patterns: Tuple[str, ...]) -> "re.Pattern":
    """One compiled regex for a tuple of fnmatch patterns (the closure asks per NEEDED)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)")


@dataclass(frozen=True)
class HostRule:
    """Libraries whose names match ``patterns`` come from the host, for ``reason``."""

    reason: str
    patterns: Tuple[str, ...]

    def matches(self, name: str) -> bool:
        return bool(_regex(self.patterns).match(name))


#: Never bundled, whatever the flags say.
ALWAYS = (HostRule("glibc family", GLIBC_FAMILY), HostRule("kernel vdso", VDSO))


@dataclass(frozen=True)
class HostPolicy:
    """Which libraries stay on the host, decided by name and by the spec owning the file.

    Order: the glibc family and the vdso always; then ``bundle`` patterns (``--bundle-lib``)
    win over everything below; then the name ``rules`` (GPU drivers, ``--host-lib``); then
    files under the prefix of an external spec (``externals``: (prefix, reason)), unless
    ``--bundle-externals`` left them out.
    """

    rules: Tuple[HostRule, ...] = ()
    bundle: Tuple[str, ...] = ()
    externals: Tuple[Tuple[str, str], ...] = ()

    def reason(self, needed: str) -> Optional[str]:
        """Why the library named ``needed`` stays on the host, or None to look for it."""
        for rule in ALWAYS:
            if rule.matches(needed):
                return rule.reason
        if self._bundled(needed):
            return None
        return next((rule.reason for rule in self.rules if rule.matches(needed)), None)

    def file_reason(self, real_path: str) -> Optional[str]:
        """Why the library file found at ``real_path`` stays on the host, or None."""
        if self._bundled(os.path.basename(real_path)):
            return None
        for prefix, reason in self.externals:
            if real_path.startswith(prefix.rstrip(os.sep) + os.sep):
                return reason
        return None

    @staticmethod
    def always_there(name: str) -> bool:
        """Whether every glibc host has it (nothing to check before running)."""
        return any(rule.matches(name) for rule in ALWAYS)

    def _bundled(self, name: str) -> bool:
        return bool(self.bundle) and bool(_regex(self.bundle).match(name))

    @property
    def patterns(self) -> Sequence[str]:
        return [p for rule in ALWAYS + self.rules for p in rule.patterns]


def for_environment(
    nodes: Iterable,
    host_libs: Sequence[str] = (),
    bundle_libs: Sequence[str] = (),
    bundle_externals: bool = False,
) -> HostPolicy:
    """The policy for an environment's link/run ``nodes`` and the user's overrides."""
    rules = [HostRule("GPU driver", GPU_DRIVERS)]
    if host_libs:
        rules.append(HostRule("--host-lib", tuple(host_libs)))
    # The C library is an external too, but its files are the glibc family above: as an
    # owner of /usr it would claim every system library.
    externals: Dict[str, List[str]] = {}
    for spec in nodes:
        if spec.external and spec.external_path and not spec.package.provides("libc"):
            externals.setdefault(os.path.realpath(spec.prefix), []).append(
                spec.cformat("{name}{@version}"))
    # Several externals in one prefix (/usr) cannot tell which of them a file is from.
    reasons = tuple(
        (prefix, f"external {names[0]}" if len(names) == 1
         else f"externals in {prefix}: {', '.join(names)}")
        for prefix, names in externals.items()
    )
    return HostPolicy(tuple(rules), tuple(bundle_libs), () if bundle_externals else reasons)


#: The policy with no environment and no overrides.
DEFAULT_POLICY = HostPolicy(rules=(HostRule("GPU driver", GPU_DRIVERS),))
