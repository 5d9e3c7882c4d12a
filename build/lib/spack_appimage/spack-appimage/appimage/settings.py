"""Defaults from ``config:appimage`` (any scope: site, user, or the environment's
``spack.yaml`` under ``spack: config: appimage:``), overridden by command-line flags.

Spack's ``config`` schema accepts keys it does not know, so nothing validates these
values before us: each is checked here, with an error naming the key and its scope's
command to fix it.
"""

import os
from typing import Any, Optional

import spack.config
import spack.util.path

from .errors import AppImageError
from .squashfs import COMPRESSIONS

#: key -> what it holds, for every ``config:appimage`` key
KEYS = {
    "runtime": "path of an AppImage type-2 runtime file",
    "compression": "squashfs compression: " + ", ".join(COMPRESSIONS),
}


def get(key: str, flag_value: Any = None) -> Optional[Any]:
    """The flag's value if given, else ``config:appimage:<key>``, validated."""
    if flag_value is not None:
        return flag_value
    value = spack.config.get(f"config:appimage:{key}")
    if value is None:
        return None
    fix = f"set it with `spack config add config:appimage:{key}:VALUE`, or remove it"
    if not isinstance(value, str) or not value:
        raise AppImageError(f"config:appimage:{key} must be a {KEYS[key]}, not {value!r}", fix)
    if key == "compression" and value not in COMPRESSIONS:
        raise AppImageError(f"config:appimage:compression: unknown compression {value!r}", fix)
    if key == "runtime":
        value = spack.util.path.canonicalize_path(value)
        if not os.path.isfile(value):
            raise AppImageError(f"config:appimage:runtime: no file {value}", fix)
    return value


def check_known_keys() -> None:
    section = spack.config.get("config:appimage") or {}
    if not isinstance(section, dict):
        raise AppImageError("config:appimage must be a mapping of the keys "
                            + ", ".join(KEYS), "see config.yaml.example")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise AppImageError(
            f"unknown key config:appimage:{unknown[0]}",
            "known keys: " + ", ".join(KEYS) + " (see config.yaml.example)",
        )
