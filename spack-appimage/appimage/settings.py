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

from . import runtime
from .compat import get_mark_from_yaml_data
from .errors import AppImageError
from .squashfs import COMPRESSIONS
from .storeview import MODES as STORE_VIEW_MODES

#: key -> (type, what it holds), for every ``config:appimage`` key
KEYS = {
    "runtime": (str, "path of an AppImage type-2 runtime file"),
    "compression": (str, "squashfs compression: " + ", ".join(COMPRESSIONS)),
    "host_libs": (list, "list of library name patterns taken from the host"),
    "bundle_libs": (list, "list of library name patterns always bundled"),
    "store_view": (str, "store view mode: " + ", ".join(STORE_VIEW_MODES)),
    "bundle_externals": (bool, "true to bundle the libraries of external specs"),
    "include": (list, "list of SPEC:GLOB files to bundle beyond the ELF closure"),
    "exclude": (list, "list of prefix-relative globs of data files to leave out"),
    "keep": (list, "list of prefix-relative globs of data files to keep"),
    "exclude_specs": (list, "list of extension names (or globs) not bundled with their "
                            "interpreter"),
    "sign": ((bool, str), "boolean (true: sign with the one signing key of Spack's "
                          "keyring) or the key to sign with (a fingerprint, key ID or "
                          "e-mail)"),
}


def get(key: str, flag_value: Any = None) -> Optional[Any]:
    """The flag's value if given, else ``config:appimage:<key>``, validated. For lists,
    flags add to the configured values."""
    kind, meaning = KEYS[key]
    value = spack.config.get(f"config:appimage:{key}")
    fix = f"see config.yaml.example, or remove config:appimage:{key}"
    if value is not None and (
        not isinstance(value, kind)
        or (kind is list and not all(isinstance(v, str) and v for v in value))
        or (isinstance(value, str) and not value)
    ):
        raise AppImageError(f"config:appimage:{key} must be a {meaning}, not {value!r}", fix)
    if kind is list:
        return list(value or []) + list(flag_value or [])
    if flag_value is not None:
        return flag_value
    if key == "compression" and value is not None and value not in COMPRESSIONS:
        raise AppImageError(f"config:appimage:compression: unknown compression {value!r}", fix)
    if key == "store_view" and value is not None and value not in STORE_VIEW_MODES:
        raise AppImageError(f"config:appimage:store_view: unknown mode {value!r} (one of "
                            f"{', '.join(STORE_VIEW_MODES)})", fix)
    if key == "runtime" and value is not None:
        return _configured_runtime(value, fix)
    return value


def _configured_runtime(value: str, fix: str) -> str:
    """The path ``config:appimage:runtime`` names, checked as a pre-built runtime
    (:func:`runtime.check_configured`); messages name the setting and the file that sets
    it, not the ``--runtime`` flag."""
    where = "config:appimage:runtime" + _where_set(value)
    path = spack.util.path.canonicalize_path(value)
    if not os.path.isfile(path):
        raise AppImageError(f"{where}: no file {path}", fix)
    runtime.check_configured(path, where)
    return path


def _where_set(value) -> str:
    """`` (in FILE:LINE)`` of a configuration value, from the mark Spack's YAML loader
    leaves on it; `` (in command_line)`` for one set with ``-c`` (a mark without a line)."""
    mark = get_mark_from_yaml_data(value)
    if mark is None:
        return ""
    return f" (in {mark.name}{'' if mark.line is None else f':{mark.line + 1}'})"


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
