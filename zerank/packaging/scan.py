"""Recognising a pickle by its content, whatever the file's name: what ``zerank publish`` refuses to upload.

A pickle runs code when it is loaded, so a package must hold none: not as ``*.pkl``, not renamed, not compressed, not
inside a zip archive (torch.save's format, .npz) and not as an .npy array of Python objects. :func:`pickle_content`
says why a file is one, or None.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickletools
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

# Pickle opcodes, as bytes: the byte after a pickle's PROTO header is one of them.
PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Bytes read from the start of a file (or of its decompressed stream) to recognise a pickle or an .npy header.
SNIFF_BYTES = 1 << 16
# Largest file searched for a protocol-0/1 pickle (no header: the whole file is disassembled).
HEADERLESS_PICKLE_MAX_BYTES = 16 << 20


def _pickle_header(data: bytes) -> str | None:
    """Why ``data`` (a file's or a decompressed stream's first bytes) starts a pickle with a header, else None: a
    pickle of protocol 2 to 5 (PROTO, then an opcode) or an .npy array of Python objects (stored as a pickle)."""
    if len(data) >= 3 and data[0] == 0x80 and 2 <= data[1] <= 5 and data[2:3] in PICKLE_OPCODES:
        return f"a pickle (protocol {data[1]})"
    if data.startswith(NPY_MAGIC):
        stream = io.BytesIO(data)
        try:
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(stream)
        except Exception:  # noqa: BLE001 -- an unreadable header: numpy refuses to load it anyway
            return None
        return "an .npy array of Python objects (a pickle)" if dtype.hasobject else None
    return None


def _is_headerless_pickle(stream) -> bool:
    """Whether ``stream`` (at its start) is one whole pickle of protocol 0 or 1, which have no header: its bytes
    disassemble, with a consistent stack, up to a STOP that ends the stream."""
    try:
        with open(os.devnull, "w") as sink:
            pickletools.dis(stream, out=sink)
    except Exception:  # noqa: BLE001 -- not a pickle (dis raises ValueError and decoding errors)
        return False
    return stream.read(1) == b""


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    """The first ``SNIFF_BYTES`` + 1 bytes of a gzip, zlib, bzip2, xz or lzma file's decompressed stream (reading
    no more than that, whatever the compression ratio), else None."""
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:  # zlib (joblib's compression)
        try:
            return zlib.decompressobj().decompress(head, SNIFF_BYTES + 1)
        except zlib.error:
            return None
    openers = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open, b"]\x00\x00": lzma.open}
    opener = next((opener for magic, opener in openers.items() if head.startswith(magic)), None)
    if opener is None:
        return None
    try:
        with opener(path, "rb") as f:
            return f.read(SNIFF_BYTES + 1)
    except (OSError, EOFError, lzma.LZMAError):  # not compressed after all: the magic bytes were a coincidence
        return None


def _zipped_pickle(path: Path) -> str | None:
    """Why a zip archive (torch.save's format, .npz) holds a pickle: a .pkl/.pickle member or an object .npy."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if PurePosixPath(member).suffix.lower() in (".pkl", ".pickle"):
                    return f"a zip archive holding the pickle {member} (torch.save's format)"
                if member.lower().endswith(".npy"):
                    with archive.open(member) as npy:
                        if _pickle_header(npy.read(SNIFF_BYTES)):
                            return f"a zip archive holding {member}, an .npy array of Python objects"
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def pickle_content(path: Path) -> str | None:
    """Why the file at ``path`` holds a pickle, recognised by its content whatever its name, else None: a pickle
    (pickle.dump, joblib, torch.save's legacy format; of protocol 0 or 1, which have no header, up to
    ``HEADERLESS_PICKLE_MAX_BYTES``), one compressed with gzip, zlib, bzip2, xz or lzma (of protocol 0 or 1: up to
    ``SNIFF_BYTES`` decompressed), an .npy array of Python objects, or a zip archive (torch.save, .npz) holding a
    pickle."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        if reason := _pickle_header(head):
            return reason
        if head[:1] in PICKLE_OPCODES and os.fstat(f.fileno()).st_size <= HEADERLESS_PICKLE_MAX_BYTES:
            f.seek(0)
            if _is_headerless_pickle(f):
                return "a pickle (protocol 0 or 1)"
    data = _decompressed_head(path, head)
    if data is not None:
        if reason := _pickle_header(data):
            return f"{reason}, compressed"
        if len(data) <= SNIFF_BYTES and data[:1] in PICKLE_OPCODES and _is_headerless_pickle(io.BytesIO(data)):
            return "a pickle (protocol 0 or 1), compressed"
        return None
    return _zipped_pickle(path) if head.startswith(ZIP_MAGIC) else None
