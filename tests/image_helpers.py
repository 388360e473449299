"""Image files built byte by byte for the tests that feed hostile input (test_images,
test_hostile_server)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int) -> Path:
    """A real, valid greyscale PNG of side x side zeros: about a megabyte that would decode
    to side**2 bytes (20000: 400 MB as L, 1.2 GB as RGB). Streamed, never held whole."""
    z = zlib.compressobj(1)
    row = bytes(side + 1)  # filter byte 0 + zeros
    parts = [z.compress(row) for _ in range(side)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )
    return path
