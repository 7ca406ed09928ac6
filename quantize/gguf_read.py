"""Minimal GGUF reading that also accepts the project's own tensor types (which gguf-py rejects)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .formats import FORMATS_BY_ID

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("GGUF file is truncated")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self) -> bytes:
        n = self.take("<Q")
        value = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return value

    def skip_value(self, kind: int) -> None:
        if kind == 8:
            self.string()
        elif kind == 9:
            element, count = self.take("<IQ")
            if element == 8:
                for _ in range(count):
                    self.string()
            elif element == 9:
                raise ValueError("nested GGUF arrays are not supported")
            else:
                self.pos += _SCALAR_SIZES[element] * count
        else:
            self.pos += _SCALAR_SIZES[kind]


def read_tensor_table(path: str | Path) -> tuple[list[dict], int]:
    """Tensor entries (name, shape in numpy order, type_id, offset) and the data start offset."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(data)
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("<IQQ")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        kind = r.take("<I")
        if key == b"general.alignment" and kind == 4:
            alignment = r.take("<I")
        else:
            r.skip_value(kind)
    entries = []
    for _ in range(n_tensors):
        name = r.string().decode("utf-8")
        n_dims = r.take("<I")
        dims = [r.take("<Q") for _ in range(n_dims)]
        type_id, offset = r.take("<IQ")
        entries.append({"name": name, "shape": tuple(reversed(dims)), "type_id": type_id, "offset": offset})
    start = r.pos + (-r.pos % alignment)
    return entries, start


def tensor_sizes(path: str | Path) -> tuple[int, int]:
    """(elements, bytes) over all tensors of a GGUF file."""
    entries, _ = read_tensor_table(path)
    n_elements = n_bytes = 0
    for e in entries:
        fmt = FORMATS_BY_ID.get(e["type_id"])
        if fmt is None:
            import gguf

            try:
                block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(e["type_id"])]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {e['name']} has unknown type id {e['type_id']}") from None
        else:
            block, size = fmt.block_size, fmt.type_size
        n = int(np.prod(e["shape"]))
        n_elements += n
        n_bytes += n // block * size
    return n_elements, n_bytes


def load_tensor(path: str | Path, name: str) -> np.ndarray:
    """Dequantized float32 values of one tensor, for any type the converter writes."""
    from .formats import dequantize, row_bytes

    entries, start = read_tensor_table(path)
    for e in entries:
        if e["name"] == name:
            fmt = FORMATS_BY_ID.get(e["type_id"])
            if fmt is None:
                raise ValueError(f"{path}: tensor {name} has type id {e['type_id']}, which the converter does not know")
            shape = e["shape"]
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            n_bytes = row_bytes(fmt, shape[-1]) * rows
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=start + e["offset"], shape=(n_bytes,))
            return dequantize(fmt, np.array(data), rows, shape[-1]).reshape(shape)
    raise KeyError(f"{path}: no tensor named {name}")
