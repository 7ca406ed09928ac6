"""A streaming GGUF (version 3) writer that accepts the project's own tensor type ids.

gguf-py's GGUFWriter only takes ggml types and holds every tensor until the end; this writer
lays out the header from the tensor shapes first and then takes each tensor's bytes as it is
produced. The file is written under a temporary name in the output folder and renamed at the
end, so an interrupted conversion never leaves a partial file at the output path.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

ALIGNMENT = 32  # GGUF default (general.alignment)

# GGUF metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                   FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}


def _string(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack("<Q", len(data)) + data


def _value(kind: int, value, element_kind: int | None = None) -> bytes:
    if kind == STRING:
        return _string(value)
    if kind == ARRAY:
        header = struct.pack("<IQ", element_kind, len(value))
        if element_kind == STRING:
            return header + b"".join(_string(v) for v in value)
        fmt = _SCALAR_FORMATS[element_kind]
        return header + np.asarray(value, dtype=np.dtype(fmt)).tobytes()
    return struct.pack(_SCALAR_FORMATS[kind], value)


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]   # numpy order: [rows, cols] or [n]
    type_id: int
    n_bytes: int


class GGUFOutput:
    """Collects metadata and tensor entries, then writes the file in one pass."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._kv: list[bytes] = []
        self._keys: set[str] = set()
        self.tensors: list[TensorEntry] = []

    def add(self, key: str, kind: int, value, element_kind: int | None = None) -> None:
        if key in self._keys:
            raise ValueError(f"metadata key {key} added twice")
        self._keys.add(key)
        self._kv.append(_string(key) + struct.pack("<I", kind) + _value(kind, value, element_kind))

    def add_tensor(self, name: str, shape: tuple[int, ...], type_id: int, n_bytes: int) -> None:
        self.tensors.append(TensorEntry(name, tuple(int(s) for s in shape), int(type_id), int(n_bytes)))

    def _header(self) -> bytes:
        parts = [b"GGUF", struct.pack("<IQQ", 3, len(self.tensors), len(self._kv)), *self._kv]
        offset = 0
        for t in self.tensors:
            dims = list(reversed(t.shape))  # GGUF ne[0] is the row length
            parts.append(_string(t.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                         + struct.pack("<IQ", t.type_id, offset))
            offset += t.n_bytes + (-t.n_bytes % ALIGNMENT)
        header = b"".join(parts)
        return header + b"\0" * (-len(header) % ALIGNMENT)

    def write(self, produce: Callable[[TensorEntry], np.ndarray | bytes],
              progress: Callable[[Iterable], Iterable] | None = None) -> int:
        """Write the file: produce(entry) returns each tensor's bytes in order. Returns the size."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".partial", dir=self.path.parent)
        try:
            # mkstemp creates the file with mode 0600. The output gets the mode that open() would
            # give a new file (0666 less the umask), which os.replace keeps.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                f.write(self._header())
                entries = progress(self.tensors) if progress else self.tensors
                for entry in entries:
                    data = produce(entry)
                    data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
                    if len(data) != entry.n_bytes:
                        raise RuntimeError(f"tensor {entry.name}: produced {len(data)} bytes, expected {entry.n_bytes}")
                    f.write(data)
                    f.write(b"\0" * (-len(data) % ALIGNMENT))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size
