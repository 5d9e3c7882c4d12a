"""What stays on the host: the libraries an image must never bundle.

The policy is data (name patterns with the reason for each) so that site rules for MPI,
GPU drivers or Spack externals extend it without touching the closure code.

The glibc family has to come from the host: the loader (PT_INTERP) is the host's, and
libc, libm, libpthread, ... must match it exactly. The list is the glibc part of
``spack.verify_libraries.ALLOW_UNRESOLVED`` (Spack's own list of libraries outside its
control); the gcc runtime libraries in that list are deliberately *not* host libraries
here, because a program built by a newer gcc than the host's needs its own libstdc++.
"""

import fnmatch
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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


@dataclass(frozen=True)
class HostRule:
    """Libraries whose names match ``patterns`` come from the host, for ``reason``."""

    reason: str
    patterns: Tuple[str, ...]


@dataclass(frozen=True)
class HostPolicy:
    rules: Tuple[HostRule, ...]

    def reason(self, needed: str) -> Optional[str]:
        """Why the library named ``needed`` stays on the host, or None to bundle it."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(needed, pattern) for pattern in rule.patterns):
                return rule.reason
        return None

    @property
    def patterns(self) -> Sequence[str]:
        return [p for rule in self.rules for p in rule.patterns]


DEFAULT_POLICY = HostPolicy(
    rules=(HostRule("glibc family", GLIBC_FAMILY), HostRule("kernel vdso", VDSO))
)
