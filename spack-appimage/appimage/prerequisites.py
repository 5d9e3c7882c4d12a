"""What a build needs besides Spack, and the command that gets each on this system.

A newcomer's first build should not fail half-way with a raw ``[Errno 2]``, nor wait a
silent minute while Spack bootstraps a tool, nor be told to run an install command that
this system refuses. So the needs are checked before the first stage, and each missing
one is a single line naming the command that works here: the distribution's package
manager (read from ``/etc/os-release``), else Spack.

This module imports nothing but the standard library: it must work when pyelftools
itself is what is missing.
"""

import functools
import os
import sys
import sysconfig
from typing import Dict, Optional

#: Distribution family (``ID`` or one of ``ID_LIKE`` in /etc/os-release) -> how it installs
#: packages, and its names for what the extension needs.
PACKAGES: Dict[str, Dict[str, str]] = {
    "debian": {
        "install": "apt install",
        "pyelftools": "python3-pyelftools",
        "patchelf": "patchelf",
        "pkg-config": "pkg-config",
        "cc": "gcc",
        "mksquashfs": "squashfs-tools",
        "gpg": "gnupg",
        "runtime-libraries": "libsquashfuse-dev libfuse3-dev libzstd-dev zlib1g-dev "
                             "liblzma-dev liblz4-dev liblzo2-dev",
    },
    "fedora": {
        "install": "dnf install",
        "pyelftools": "python3-pyelftools",
        "patchelf": "patchelf",
        "pkg-config": "pkgconf-pkg-config",
        "cc": "gcc",
        "mksquashfs": "squashfs-tools",
        "gpg": "gnupg2",
    },
    "suse": {
        "install": "zypper install",
        "pyelftools": "python3-pyelftools",
        "patchelf": "patchelf",
        "pkg-config": "pkg-config",
        "cc": "gcc",
        "mksquashfs": "squashfs",
        "gpg": "gpg2",
    },
}

#: What Spack installs when the distribution has no (static) package for it.
SPACK_PACKAGES = {
    "patchelf": "patchelf",
    "pkg-config": "pkgconf",
    "mksquashfs": "squashfs+zstd",
    "runtime-libraries": "squashfuse libfuse@3",
    "gpg": "gnupg",
}


@functools.lru_cache(maxsize=None)
def os_release(path: str = "/etc/os-release") -> Dict[str, str]:
    """The KEY=value pairs of os-release. (Spack vendors ``distro``, but under another
    module name in each release the extension supports; these few lines need none.)"""
    try:
        with open(path) as f:
            pairs = [line.rstrip("\n").split("=", 1) for line in f if "=" in line]
    except OSError:
        return {}
    return {key: value.strip('"') for key, value in pairs}


def family(release: Optional[Dict[str, str]] = None) -> Optional[str]:
    """``debian``, ``fedora`` or ``suse`` (Ubuntu is ``debian``, RHEL and Rocky are
    ``fedora``), or None for a system this module has no package names for."""
    release = os_release() if release is None else release
    for name in [release.get("ID", "")] + release.get("ID_LIKE", "").split():
        for known in PACKAGES:
            if name == known or (known == "fedora" and name in ("rhel", "centos")) or (
                    known == "suse" and name.startswith("opensuse")):
                return known
    return None


def install_command(need: str) -> str:
    """The command that installs ``need`` here: the distribution's package, else Spack's
    (then put on PATH)."""
    packages = PACKAGES.get(family() or "", {})
    commands = []
    if need in packages:
        commands.append(f"{packages['install']} {packages[need]}")
    if need in SPACK_PACKAGES:
        commands.append(f"spack install {SPACK_PACKAGES[need]}")
    return " or ".join(f"`{c}`" for c in commands)


def externally_managed() -> bool:
    """Whether the Python running Spack refuses ``pip install`` outside a virtual
    environment (PEP 668: Debian 12 and Ubuntu 24.04 mark their system Python so)."""
    if sys.prefix != sys.base_prefix:  # a venv: pip works
        return False
    stdlib = sysconfig.get_path("stdlib")
    return bool(stdlib) and os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))


def pyelftools_advice() -> str:
    """How to get pyelftools into the Python that runs Spack (``sys.executable``)."""
    python = sys.executable
    if not externally_managed():
        return f"install it: {python} -m pip install pyelftools"
    packages = PACKAGES.get(family() or "", {})
    venv = ("or use a virtual environment: python3 -m venv ~/spack-venv && "
            "~/spack-venv/bin/pip install pyelftools clingo && "
            "export SPACK_PYTHON=~/spack-venv/bin/python3")
    if "pyelftools" in packages:
        return f"install it: {packages['install']} {packages['pyelftools']} ({venv})"
    return f"{python} is externally managed (PEP 668); {venv}"
