"""The desktop entry and icon at the AppDir root that AppImage tools expect.

appimagetool refuses an AppDir without one ``*.desktop`` file at its root whose ``Icon``
names an image file there; appimaged and AppImageLauncher read both (and ``.DirIcon``)
from the squashfs to integrate the image. The programs are command-line tools, so the
entry says ``Terminal=true``. The icon is drawn here as a PNG
(about a kilobyte) rather than shipped, so the repository holds no binary file.
"""

import os
import struct
import zlib
from typing import Optional, Sequence

#: Freedesktop categories (both are main categories; menus may list the image twice).
CATEGORIES = "Science;Development;"

ICON_SIZE = 256


def write(appdir: str, name: str, entry_names: Sequence[str], default: Optional[str]) -> None:
    """``<name>.desktop``, ``<name>.png`` and ``.DirIcon`` (a link to the PNG).

    Desktop integrators replace the first word of ``Exec`` with the image's path and keep
    the rest, so ``Exec`` names the entry to run as AppRun's first argument, unless
    AppRun needs none (one entry, or a default entry)."""
    needs_name = len(entry_names) > 1 and not default
    exec_line = f"AppRun {entry_names[0]}" if needs_name else "AppRun"
    with open(os.path.join(appdir, f"{name}.desktop"), "w") as f:
        f.write(
            "[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={name}\n"
            f"Comment=Programs of a Spack environment: {', '.join(entry_names)}\n"
            f"Exec={exec_line}\n"
            f"Icon={name}\n"
            "Terminal=true\n"
            f"Categories={CATEGORIES}\n"
        )
    with open(os.path.join(appdir, f"{name}.png"), "wb") as f:
        f.write(icon_png())
    os.symlink(f"{name}.png", os.path.join(appdir, ".DirIcon"))


def icon_png(size: int = ICON_SIZE) -> bytes:
    """A square PNG: a dark blue tile with a lighter stacked-layers mark."""
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type: none
        for x in range(size):
            row += bytes(_pixel(x / size, y / size))
        rows.append(bytes(row))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def _pixel(x: float, y: float):
    """RGBA at (x, y) in [0, 1): rounded tile, three layers."""
    corner = 0.12
    dx, dy = max(corner - x, x - 1 + corner, 0), max(corner - y, y - 1 + corner, 0)
    if dx * dx + dy * dy > corner * corner:
        return (0, 0, 0, 0)
    for top in (0.25, 0.45, 0.65):
        if top <= y < top + 0.12 and 0.2 + (y - top) * 0.5 <= x < 0.8 - (y - top) * 0.5:
            return (235, 242, 250, 255)
    return (22, 60, 110, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
