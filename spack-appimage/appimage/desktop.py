"""The desktop entry and icon at the AppDir root that AppImage tools expect.

appimagetool refuses an AppDir without one ``*.desktop`` file at its root whose ``Icon``
names an image file there; appimaged and AppImageLauncher read both (and ``.DirIcon``)
from the squashfs to integrate the image. The programs are command-line tools, so the
entry says ``Terminal=true``. The icon is drawn here as a PNG
(about a kilobyte) rather than shipped, so the repository holds no binary file.

The names written into it (the output's, the entries') are escaped as the Desktop Entry
Specification says; those it cannot hold (a control character: a newline would start a
key of its own, such as ``Exec=``; bytes that are not UTF-8) are refused before the build
starts (:func:`check_names`).
"""

import os
import re
import struct
import unicodedata
import zlib
from typing import Optional, Sequence

from .errors import OutputError

#: Freedesktop categories (both are main categories; menus may list the image twice).
CATEGORIES = "Science;Development;"

ICON_SIZE = 256


def image_name(output: str) -> str:
    """The image's name for its desktop entry: the output file name without ``.app``."""
    name = os.path.basename(output)
    for suffix in (".app", ".AppImage", ".appimage"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def check_names(output: str, entries: Sequence[str]) -> None:
    """Refuse an ``-o`` file name or an ``--entry`` (``NAME[=SPEC]``) that a desktop
    entry cannot hold."""
    for flag, name in [("-o", image_name(output))] + [("--entry", e) for e in entries]:
        try:
            name.encode("utf-8")
            control = any(unicodedata.category(c) == "Cc" for c in name)
        except UnicodeEncodeError:  # bytes of the command line that are not UTF-8
            control = True
        if control:
            raise OutputError(
                f"{flag} {ascii(name)} holds a control character or bytes that are not "
                "UTF-8, which the image's desktop entry cannot hold",
                "choose a name without them")


def write(appdir: str, output: str, entry_names: Sequence[str], default: Optional[str]) -> None:
    """``<name>.desktop``, ``<name>.png`` and ``.DirIcon`` (a link to the PNG), named
    after the ``output`` file (:func:`image_name`).

    Desktop integrators replace the first word of ``Exec`` with the image's path and keep
    the rest, so ``Exec`` names the entry to run as AppRun's first argument, unless
    AppRun needs none (one entry, or a default entry)."""
    name = image_name(output)
    needs_name = len(entry_names) > 1 and not default
    exec_line = f"AppRun {_exec_argument(entry_names[0])}" if needs_name else "AppRun"
    with open(os.path.join(appdir, f"{name}.desktop"), "w", encoding="utf-8") as f:
        f.write(
            "[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={_value(name)}\n"
            f"Comment={_value('Programs of a Spack environment: ' + ', '.join(entry_names))}\n"
            f"Exec={_value(exec_line)}\n"
            f"Icon={_value(name)}\n"
            "Terminal=true\n"
            f"Categories={CATEGORIES}\n"
        )
    with open(os.path.join(appdir, f"{name}.png"), "wb") as f:
        f.write(icon_png())
    os.symlink(f"{name}.png", os.path.join(appdir, ".DirIcon"))


def _value(text: str) -> str:
    """A string value: backslashes escaped, and a leading space kept (``\\s``), as
    readers strip the spaces around ``=``."""
    text = text.replace("\\", "\\\\")
    return "\\s" + text[1:] if text.startswith(" ") else text


#: Characters of an ``Exec`` argument that must be inside double quotes (the spec's
#: "reserved characters").
_RESERVED = re.compile(r"[\s\"'\\><~|&;$*?#()`]")


def _exec_argument(word: str) -> str:
    """``word`` as one argument of ``Exec``: in double quotes when it holds a reserved
    character (and then double quote, backquote, dollar and backslash escaped), ``%``
    doubled so that it is no field code. :func:`_value` escapes the line afterwards."""
    if _RESERVED.search(word):
        word = '"' + re.sub(r'(["`$\\])', r"\\\1", word) + '"'
    return word.replace("%", "%%")


def icon_png(size: int = ICON_SIZE) -> bytes:
    """A square PNG: a dark blue rounded tile with three light, narrowing bars.

    Drawn a row at a time (runs of equal pixels), not a pixel at a time: per pixel in
    Python it took 0.13 s of every build."""
    transparent, tile, bar = b"\0\0\0\0", bytes((22, 60, 110, 255)), bytes((235, 242, 250, 255))
    corner = int(size * 0.12)
    rows = []
    for y in range(size):
        # Rounded corners: how far the tile is inset on this row.
        dy = max(corner - y, y - (size - 1 - corner), 0)
        inset = corner - int((corner * corner - dy * dy) ** 0.5) if dy else 0
        row = [(inset, transparent), (size - 2 * inset, tile), (inset, transparent)]
        for top in (0.25, 0.45, 0.65):
            depth = y / size - top
            if 0 <= depth < 0.12:
                left, right = int(size * (0.2 + depth * 0.5)), int(size * (0.8 - depth * 0.5))
                row = [(inset, transparent), (left - inset, tile), (right - left, bar),
                       (size - inset - right, tile), (inset, transparent)]
        rows.append(b"\0" + b"".join(pixel * count for count, pixel in row))  # filter: none
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
