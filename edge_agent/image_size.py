"""Image dimensions from the file header, read before anything is decoded.

Why: a 20000x20000 PNG decodes to 1.2 GB before any check on the array could run, and
OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``) is read only once, when cv2 is first
imported, so it cannot follow the agent's configuration. Reading a few header bytes bounds
memory whatever the file says.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

DEFAULT_MAX_PIXELS = 50_000_000  # ~ 8K UHD (33 Mpx) with room; 150 MB as a BGR frame

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(f) -> Optional[tuple[int, int]]:
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if marker in _JPEG_SOF:
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        f.seek(length - 2, 1)
        # The next byte must start a marker; anything else is not a JPEG we understand.
        if f.read(1) != b"\xff":
            return None
        f.seek(-1, 1)


def _tiff(f, head: bytes) -> Optional[tuple[int, int]]:
    order = "<" if head[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", head[4:8])
    f.seek(offset)
    count_bytes = f.read(2)
    if len(count_bytes) < 2:
        return None
    (count,) = struct.unpack(order + "H", count_bytes)
    size: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        entry = f.read(12)
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (size[256], size[257]) if 256 in size and 257 in size else None


def image_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) of a PNG, JPEG, BMP, WebP or TIFF file; None if the header is not one."""
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            return _jpeg(f)
        if head[:2] == b"BM" and len(head) >= 26:
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            chunk = head[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
            if chunk == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if chunk == b"VP8 ":
                f.seek(26)
                width, height = struct.unpack("<HH", f.read(4))
                return width & 0x3FFF, height & 0x3FFF
            return None
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(f, head)
    return None
