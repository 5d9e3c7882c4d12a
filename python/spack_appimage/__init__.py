"""Entry point for pip installs: Spack calls ``get_extension_paths`` for the group
``spack.extensions`` and loads the extension from the returned directory.

Spack derives an extension's name from its directory's basename, which must read
``spack-<name>``; a Python package cannot be named so, so the extension root is shipped
as package data under that name (in a checkout it is a symlink to ../../spack-appimage).
"""

import os


def get_extension_paths():
    return [os.path.join(os.path.dirname(os.path.abspath(__file__)), "spack-appimage")]
