#!/usr/bin/env python3
"""Write a corpus of broken and hostile GGUF files, each with the error the loader must raise.

The files are mutations of tiny random Gemma 3 models (tests/tiny_gguf.py) and of the header of
the real default model. A real-model case keeps the original metadata and tensor table (about
6.5 MB) and leaves the tensor data as a hole in a sparse file. Only the bytes a case needs are
written into the hole, so the corpus stays small and fast to load.

    python scripts/make_broken_corpus.py OUT_DIR [--model PATH | --no-real]

writes OUT_DIR/<case>.gguf and OUT_DIR/manifest.json, a list of
{"name", "file", "description", "expect", "loads", "hostile_count", "known_bug"}:
"expect" holds regular expressions the ModelLoadError message must match (it must also name
the file), "loads" marks files that are odd but valid and must load, "hostile_count" marks
files whose counts or lengths claim far more than the file holds (the loader's peak memory is
checked on them), and "known_bug" says where a case still fails and why.
tests/test_broken_files.py generates the corpus and loads every file in a subprocess.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

# GGUF metadata value types (GGUF specification, ggml/docs/gguf.md).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_SIZES = {UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4, FLOAT32: 4, BOOL: 1,
                UINT64: 8, INT64: 8, FLOAT64: 8}
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                  FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
# ggml tensor types used below: (id, elements per block, bytes per block).
F32, F16, Q4_0, Q4_1, Q8_0, Q8_1, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 9, 12, 14, 30
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34),
          Q8_1: (32, 36), Q4_K: (256, 144), Q6_K: (256, 210), 6: (32, 22)}
F16_NAN, F16_INF = 0x7E00, 0x7C00
U64_MAX = 2**64 - 1
HEADER_BYTES = 24  # magic, version, tensor count, metadata count


# GGUF layout ----------------------------------------------------------------------------------


@dataclass
class KV:
    key: bytes
    vtype: int
    payload: bytes  # the encoded value after the type field


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    ggml_type: int
    offset: int | None  # None: placed after the previous tensor when the file is built
    data: bytes | None = None  # None for real-model layouts, whose data stays in the hole


@dataclass
class Layout:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data_size: int = 0  # bytes of the data section of a real-model layout
    magic: bytes = b"GGUF"
    tensor_count: int | None = None  # None: the number of entries
    kv_count: int | None = None

    @property
    def alignment(self) -> int:
        kv = self.find_kv(b"general.alignment")
        return struct.unpack(SCALAR_FORMATS[kv.vtype], kv.payload)[0] if kv and kv.vtype in SCALAR_FORMATS else 32

    def find_kv(self, key: bytes) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def kv(self, key: str) -> KV:
        found = self.find_kv(key.encode())
        if found is None:
            raise KeyError(key)
        return found

    def tensor(self, name: str) -> TensorInfo:
        return next(t for t in self.tensors if t.name == name.encode())

    def copy(self) -> Layout:
        return copy.deepcopy(self)


def value_end(blob: bytes, pos: int, vtype: int) -> int:
    """Position after a value of vtype encoded at pos."""
    if vtype in SCALAR_SIZES:
        return pos + SCALAR_SIZES[vtype]
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", blob, pos)[0]
    if vtype == ARRAY:
        element_type, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        if element_type in SCALAR_SIZES:
            return pos + count * SCALAR_SIZES[element_type]
        for _ in range(count):
            pos = value_end(blob, pos, element_type)
        return pos
    raise ValueError(f"value type {vtype} at byte {pos}")


def parse_layout(blob: bytes, file_size: int | None = None) -> tuple[Layout, int]:
    """Parse a well-formed GGUF file (or its header) into a Layout; return it and the data start."""
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", blob, 0)
    pos = HEADER_BYTES
    kvs = []
    for _ in range(n_kv):
        (length,) = struct.unpack_from("<Q", blob, pos)
        key = blob[pos + 8 : pos + 8 + length]
        pos += 8 + length
        (vtype,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        end = value_end(blob, pos, vtype)
        kvs.append(KV(key, vtype, blob[pos:end]))
        pos = end
    tensors = []
    for _ in range(n_tensors):
        (length,) = struct.unpack_from("<Q", blob, pos)
        name = blob[pos + 8 : pos + 8 + length]
        pos += 8 + length
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", blob, pos + 4))
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        tensors.append(TensorInfo(name, dims, ggml_type, offset))
    layout = Layout(version, kvs, tensors)
    data_start = -(-pos // layout.alignment) * layout.alignment
    if file_size is None:
        for t in tensors:
            t.data = blob[data_start + t.offset : data_start + t.offset + tensor_bytes(t)]
            t.offset = None
    else:
        layout.data_size = file_size - data_start
    return layout, data_start


def tensor_bytes(t: TensorInfo) -> int:
    block, size = BLOCKS[t.ggml_type]
    return math.prod(t.dims) // block * size


def encode_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def encode_header(layout: Layout, offsets: list[int]) -> bytes:
    out = bytearray(layout.magic)
    out += struct.pack("<I", layout.version)
    out += struct.pack("<QQ", len(layout.tensors) if layout.tensor_count is None else layout.tensor_count,
                       len(layout.kvs) if layout.kv_count is None else layout.kv_count)
    for kv in layout.kvs:
        out += encode_string(kv.key) + struct.pack("<I", kv.vtype) + kv.payload
    for t, offset in zip(layout.tensors, offsets):
        out += encode_string(t.name) + struct.pack("<I", len(t.dims))
        out += struct.pack(f"<{len(t.dims)}Q", *t.dims) + struct.pack("<IQ", t.ggml_type, offset)
    return bytes(out)


def pad(data: bytes | bytearray, alignment: int) -> bytes:
    return bytes(data) + b"\0" * (-len(data) % alignment)


@dataclass
class Blob:
    """File contents: head, then zeros up to size (a hole), with patches written over the zeros."""

    head: bytes
    size: int
    patches: list[tuple[int, bytes]] = field(default_factory=list)

    def write(self, path: Path) -> None:
        with open(path, "wb") as out:
            out.write(self.head[: self.size])
            for position, data in self.patches:
                out.seek(position)
                out.write(data)
            out.truncate(self.size)


def build(layout: Layout, patches: dict[str, list[tuple[int, bytes]]] | None = None, trailing: bytes = b"") -> Blob:
    """Encode a layout as file contents.

    Tiny layouts carry their tensor data, placed back to back in table order unless a tensor's
    offset is set. Real-model layouts keep their offsets and a hole for the data. patches maps a
    tensor name to (byte offset inside the tensor, bytes) writes."""
    stated = layout.alignment
    valid = isinstance(stated, int) and stated > 0 and stated & (stated - 1) == 0
    alignment = stated if valid else 32
    patches = patches or {}
    if layout.tensors and layout.tensors[0].data is None or not layout.tensors:
        head = pad(encode_header(layout, [t.offset for t in layout.tensors]), alignment)
        blob = Blob(head, len(head) + layout.data_size)
        for t in layout.tensors:
            for position, data in patches.get(t.name.decode(), []):
                blob.patches.append((len(head) + t.offset + position, data))
        return blob
    data = bytearray()
    offsets = []
    for t in layout.tensors:
        offsets.append(len(data) if t.offset is None else t.offset)
        chunk = bytearray(t.data)
        for position, value in patches.get(t.name.decode(), []):
            chunk[position : position + len(value)] = value
        data += pad(chunk, 32)
    head = pad(encode_header(layout, offsets), alignment)
    content = head + bytes(data) + trailing
    return Blob(content, len(content))


def scalar(vtype: int, value) -> bytes:
    return struct.pack(SCALAR_FORMATS[vtype], value)


def array(element_type: int, values: list) -> bytes:
    body = b"".join(scalar(element_type, v) for v in values)
    return struct.pack("<IQ", element_type, len(values)) + body


def string_array(values: list[bytes]) -> bytes:
    return struct.pack("<IQ", STRING, len(values)) + b"".join(encode_string(v) for v in values)


def set_kv(layout: Layout, key: str, vtype: int, payload: bytes) -> Layout:
    found = layout.find_kv(key.encode())
    if found is None:
        layout.kvs.append(KV(key.encode(), vtype, payload))
    else:
        found.vtype, found.payload = vtype, payload
    return layout


def drop_kv(layout: Layout, key: str) -> Layout:
    layout.kvs = [kv for kv in layout.kvs if kv.key != key.encode()]
    return layout


def drop_tensor(layout: Layout, name: str) -> Layout:
    layout.tensors = [t for t in layout.tensors if t.name != name.encode()]
    return layout


def string_array_items(kv: KV) -> list[bytes]:
    _, count = struct.unpack_from("<IQ", kv.payload, 0)
    pos, items = 12, []
    for _ in range(count):
        (length,) = struct.unpack_from("<Q", kv.payload, pos)
        items.append(kv.payload[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return items


def numeric_array_items(kv: KV) -> tuple[int, list]:
    element_type, count = struct.unpack_from("<IQ", kv.payload, 0)
    size = SCALAR_SIZES[element_type]
    return element_type, [struct.unpack_from(SCALAR_FORMATS[element_type], kv.payload, 12 + i * size)[0]
                          for i in range(count)]


# Sources --------------------------------------------------------------------------------------


class Sources:
    """The files the cases mutate: tiny models written on first use, and the real model's header."""

    def __init__(self, workdir: Path, real_model: Path | None) -> None:
        self.workdir = workdir
        self.real_model = real_model
        self._tiny: dict[str, Layout] = {}
        self._real: Layout | None = None

    def tiny(self, weight_type: str = "F32") -> Layout:
        if weight_type not in self._tiny:
            import gguf
            from tiny_gguf import write_tiny_gemma3

            path = write_tiny_gemma3(self.workdir / f"source-tiny-{weight_type}.gguf",
                                     weight_type=gguf.GGMLQuantizationType[weight_type])
            self._tiny[weight_type] = parse_layout(path.read_bytes())[0]
        return self._tiny[weight_type].copy()

    def real(self) -> Layout:
        if self.real_model is None:
            raise LookupError("no real model")
        if self._real is None:
            size = self.real_model.stat().st_size
            with open(self.real_model, "rb") as f:
                head = f.read(16 * 2**20)  # the default model's header ends at 6.5 MB
            self._real = parse_layout(head, file_size=size)[0]
        return self._real.copy()


# Cases ----------------------------------------------------------------------------------------


@dataclass
class CaseSpec:
    name: str
    description: str
    make: Callable[[Sources], list[tuple[str, Blob]]]  # variant suffix ("" for one file), contents
    expect: list[str] = field(default_factory=list)
    loads: bool = False
    hostile_count: bool = False
    real: bool = False  # needs the real model
    known_bug: str | None = None


def one(make_blob: Callable[[Sources], Blob]) -> Callable[[Sources], list[tuple[str, Blob]]]:
    return lambda sources: [("", make_blob(sources))]


def with_header_field(layout_of: Callable[[Sources], Layout], offset: int, fmt: str, value):
    """Return a maker of the built layout with one header field overwritten in place."""
    def make(sources: Sources) -> Blob:
        blob = build(layout_of(sources))
        head = bytearray(blob.head)
        struct.pack_into(fmt, head, offset, value)
        return Blob(bytes(head), blob.size, blob.patches)
    return make


def tiny(sources: Sources) -> Layout:
    return sources.tiny()


def real(sources: Sources) -> Layout:
    return sources.real()


def first_key_offset() -> int:
    return HEADER_BYTES


def value_offset(blob: bytes, layout: Layout, key: str) -> int:
    """Byte offset of the value (after the type field) of key in a built layout's header."""
    pos = HEADER_BYTES
    for kv in layout.kvs:
        pos += 8 + len(kv.key) + 4
        if kv.key == key.encode():
            return pos
        pos += len(kv.payload)
    raise KeyError(key)


def tensor_entry_offset(layout: Layout, name: str) -> int:
    pos = HEADER_BYTES + sum(8 + len(kv.key) + 4 + len(kv.payload) for kv in layout.kvs)
    for t in layout.tensors:
        if t.name == name.encode():
            return pos
        pos += 8 + len(t.name) + 4 + 8 * len(t.dims) + 12
    raise KeyError(name)


def patch_value(layout_of, key: str, fmt: str, value, extra: int = 0):
    """Overwrite the encoded value of key (at `extra` bytes into it) in the built file."""
    def make(sources: Sources) -> Blob:
        layout = layout_of(sources)
        blob = build(layout)
        head = bytearray(blob.head)
        struct.pack_into(fmt, head, value_offset(blob.head, layout, key) + extra, value)
        return Blob(bytes(head), blob.size, blob.patches)
    return make


def patch_tensor_entry(layout_of, name: str, fmt: str, value, extra: int = 0):
    """Overwrite bytes of a tensor's table entry (at `extra` bytes into it) in the built file."""
    def make(sources: Sources) -> Blob:
        layout = layout_of(sources)
        blob = build(layout)
        head = bytearray(blob.head)
        struct.pack_into(fmt, head, tensor_entry_offset(layout, name) + extra, value)
        return Blob(bytes(head), blob.size, blob.patches)
    return make


def mutate(layout_of, change: Callable[[Layout], object], **build_options):
    def make(sources: Sources) -> Blob:
        layout = layout_of(sources)
        change(layout)
        return build(layout, **build_options)
    return make


def nan_scale_in(layout_of, name: str, block: int, scale_offset: int, bits: int, first: bool = False):
    """Set the fp16 scale at scale_offset of block `block` of tensor `name` to `bits`. first=True
    moves the tensor to the front of the tensor table, so the loader's scan reaches it before
    reading the rest of the (zero) data of a real-model file."""
    def make(sources: Sources) -> Blob:
        layout = layout_of(sources)
        t = layout.tensor(name)
        if first:
            layout.tensors.remove(t)
            layout.tensors.insert(0, t)
        _, block_bytes = BLOCKS[t.ggml_type]
        return build(layout, patches={name: [(block * block_bytes + scale_offset, struct.pack("<H", bits))]})
    return make


def truncations(layout_of, sample_data: int, every_field: bool = True) -> Callable[[Sources], list[tuple[str, Blob]]]:
    """Cuts through the header, the metadata, the tensor table and `sample_data` points spread over
    the data section. every_field=True cuts inside and at the edges of every field of every entry.
    every_field=False suits the 6.5 MB real header, where every cut costs megabytes of disk. It
    cuts once inside each value in the first megabyte and inside the last value, and at 3 points
    through each large array and through the tensor table."""
    def make(sources: Sources) -> list[tuple[str, Blob]]:
        layout = layout_of(sources)
        blob = build(layout)
        cuts = set(range(0, HEADER_BYTES + 1)) if every_field else {HEADER_BYTES - 1}
        pos = HEADER_BYTES
        for kv in layout.kvs:
            key_end = pos + 8 + len(kv.key)
            value_start = key_end + 4
            end = value_start + len(kv.payload)
            if every_field:
                cuts.update([pos + 4, pos + 8, key_end - 1, key_end + 2, value_start, value_start + 1,
                             (value_start + end) // 2, end - 1])
                if kv.vtype == ARRAY:
                    cuts.update([value_start + 4, value_start + 12, value_start + 13])
            else:
                if value_start < 2**20 or kv is layout.kvs[-1]:
                    cuts.add(value_start + 1)
                if len(kv.payload) > 4096:
                    cuts.update(range(value_start + 13, end, len(kv.payload) // 3 + 1))
            pos = end
        table_start = pos
        for t in layout.tensors:
            end = pos + 8 + len(t.name) + 4 + 8 * len(t.dims) + 12
            if every_field:
                cuts.update([pos + 3, pos + 8, pos + 9, pos + 8 + len(t.name) + 2, end - 10, end - 1])
            pos = end
        if not every_field:
            cuts.update(range(table_start + 5, pos, (pos - table_start) // 3 + 1))
        data_start = -(-pos // layout.alignment) * layout.alignment
        cuts.update([pos, data_start - 1, data_start, data_start + 1])
        step = max(1, (blob.size - data_start) // (sample_data + 1))
        cuts.update(range(data_start + step, blob.size, step))
        cuts.add(blob.size - 1)
        return [(f"cut{cut}", Blob(blob.head[:cut], cut, [p for p in blob.patches if p[0] + len(p[1]) <= cut]))
                for cut in sorted(c for c in cuts if 0 <= c < blob.size)]
    return make


def case_specs() -> list[CaseSpec]:
    """Return every case; nothing is read or written until a case's make() runs."""
    specs: list[CaseSpec] = []

    def add(name, description, make, expect=(), **options):
        specs.append(CaseSpec(name, description, make, list(expect), **options))

    # Header.
    for name, magic in [("ggml", b"GGML"), ("zero", b"\0\0\0\0"), ("byteswapped", b"FUGG")]:
        add(f"magic_{name}", f"magic {magic!r} instead of 'GGUF'",
            with_header_field(tiny, 0, "4s", magic), [r"not a GGUF file \(the first 4 bytes are not 'GGUF'\)"])
    add("empty_file", "a 0-byte file", one(lambda s: Blob(b"", 0)), [r"file is 0 bytes, too small for a GGUF header"])
    add("magic_only", "only the 4-byte magic", one(lambda s: Blob(b"GGUF", 4)), [r"4 bytes, too small"])
    for version in [0, 1, 4, 0x03000000, U64_MAX >> 32]:
        add(f"version_{version}", f"GGUF version {version}", with_header_field(tiny, 4, "<I", version),
            [rf"GGUF version {version} is not supported \(expected 2 or 3\)"])
    add("version_2", "GGUF version 2, whose layout equals version 3 for little-endian files",
        with_header_field(tiny, 4, "<I", 2), loads=True)

    # Truncation anywhere.
    trunc = [r"truncated|too small"]
    add("truncated_tiny", "a tiny F32 model cut at every field boundary and through its data",
        truncations(tiny, 24), trunc)
    add("truncated_real", "the default model cut through its header, vocabulary and data",
        truncations(real, 3, every_field=False), trunc, real=True)

    # Counts near 2^64 and larger than the file.
    for count in [U64_MAX, 2**63, 2**32, (1 << 16) + 1]:
        add(f"tensor_count_{count:x}", f"tensor count {count}", with_header_field(tiny, 8, "<Q", count),
            [rf"tensor count {count} (is larger than the file can hold|exceeds the limit)"], hostile_count=True)
        add(f"metadata_count_{count:x}", f"metadata count {count}", with_header_field(tiny, 16, "<Q", count),
            [rf"metadata count {count} (is larger than the file can hold|exceeds the limit)"], hostile_count=True)
    add("tensor_count_plus_one", "one tensor more than the table holds: the data is read as an entry",
        mutate(tiny, lambda l: setattr(l, "tensor_count", len(l.tensors) + 1)), [r"tensor"], hostile_count=True)
    add("metadata_count_plus_one", "one key more than stored: the tensor table is read as metadata",
        mutate(tiny, lambda l: setattr(l, "kv_count", len(l.kvs) + 1)), [r"metadata|tensor"], hostile_count=True)
    add("real_tensor_count_max", "the default model's header with tensor count 2^64-1",
        with_header_field(real, 8, "<Q", U64_MAX), [r"tensor count \d+ is larger than the file can hold"],
        hostile_count=True, real=True)
    add("real_tensor_count_million", "tensor count 2^20, which 32-byte entries in a 250 MB file could hold",
        with_header_field(real, 8, "<Q", 1 << 20), [r"tensor count 1048576 exceeds the limit of 65536"],
        hostile_count=True, real=True)
    add("real_metadata_count_million", "metadata count 2^20, which 13-byte pairs in a 250 MB file could hold",
        with_header_field(real, 16, "<Q", 1 << 20), [r"metadata count 1048576 exceeds the limit of 65536"],
        hostile_count=True, real=True)

    # String lengths near 2^64.
    for length in [U64_MAX, U64_MAX - 7, 2**63]:
        add(f"key_length_{length:x}", f"first key length {length}",
            with_header_field(tiny, first_key_offset(), "<Q", length),
            [r"file is truncated: metadata key needs \d+ bytes"], hostile_count=True)
    add("string_value_length_max", "general.architecture value length 2^64-1",
        patch_value(tiny, "general.architecture", "<Q", U64_MAX),
        [r"file is truncated: metadata string needs 18446744073709551615 bytes"], hostile_count=True)
    add("tensor_name_length_max", "first tensor name length 2^64-1",
        patch_tensor_entry(tiny, "token_embd.weight", "<Q", U64_MAX),
        [r"file is truncated: tensor name needs 18446744073709551615 bytes"], hostile_count=True)
    for count in [U64_MAX, 2**61, 2**59 + 1]:
        add(f"real_tokens_count_{count:x}", f"tokenizer.ggml.tokens claims {count} strings",
            patch_value(real, "tokenizer.ggml.tokens", "<Q", count, extra=4),
            [rf"'tokenizer\.ggml\.tokens' claims {count} elements, more than the file holds"],
            hostile_count=True, real=True)
    add("real_token_length_max", "the first vocabulary string has length 2^64-1",
        patch_value(real, "tokenizer.ggml.tokens", "<Q", U64_MAX, extra=12),
        [r"file is truncated: array string needs 18446744073709551615 bytes"], hostile_count=True, real=True)
    add("real_scores_count_overflow", "tokenizer.ggml.scores claims 2^62 floats (2^64 bytes, which wraps)",
        patch_value(real, "tokenizer.ggml.scores", "<Q", 2**62, extra=4),
        [r"'tokenizer\.ggml\.scores' claims 4611686018427387904 elements of 4 bytes"], hostile_count=True, real=True)

    # Value and element types: unknown, nested, wrong for the key.
    for vtype in [13, 0xFFFFFFFF]:
        add(f"value_type_{vtype}", f"general.name of value type {vtype}",
            mutate(tiny, lambda l, v=vtype: setattr(l.kv("general.name"), "vtype", v)),
            [rf"metadata key 'general\.name' has unknown value type {vtype} \(expected 0-12\)"])
    add("array_element_type_unknown", "tokenizer.ggml.scores as an array of element type 13",
        patch_value(tiny, "tokenizer.ggml.scores", "<I", 13),
        [r"'tokenizer\.ggml\.scores' is an array of unknown element type 13 \(expected 0-12\)"])
    nested = struct.pack("<IQ", ARRAY, 2) + array(UINT32, [1, 2, 3]) + array(UINT8, [7])
    add("nested_array_valid", "an array of two arrays, as gguf-py's GGUFWriter encodes it, under an unused key",
        mutate(tiny, lambda l: set_kv(l, "test.nested", ARRAY, nested)), loads=True)
    nested_inner_unknown = struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", 77, 0)
    add("nested_array_unknown_inner", "an array of arrays whose inner element type is 77",
        mutate(tiny, lambda l: set_kv(l, "test.nested", ARRAY, nested_inner_unknown)),
        [r"'test\.nested' is an array of unknown element type 77"])
    too_deep = struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", ARRAY, 1) + array(UINT8, [1])
    add("nested_array_too_deep", "an array of arrays of arrays",
        mutate(tiny, lambda l: set_kv(l, "test.nested", ARRAY, too_deep)), [r"'test\.nested' nests arrays deeper"])
    nested_huge = struct.pack("<IQ", ARRAY, 2**62)
    add("nested_array_count_huge", "an array of 2^62 arrays",
        mutate(tiny, lambda l: set_kv(l, "test.nested", ARRAY, nested_huge)),
        [r"'test\.nested' claims 4611686018427387904 elements, more than the file holds"], hostile_count=True)
    add("tokens_not_strings", "tokenizer.ggml.tokens as an array of int32",
        mutate(tiny, lambda l: set_kv(l, "tokenizer.ggml.tokens", ARRAY, array(INT32, list(range(272))))),
        [r"'tokenizer\.ggml\.tokens' has type array, expected an array of strings"])
    add("architecture_not_string", "general.architecture stored as uint32",
        mutate(tiny, lambda l: set_kv(l, "general.architecture", UINT32, scalar(UINT32, 3))),
        [r"'general\.architecture' has type uint32, expected string"])
    add("block_count_string", "gemma3.block_count stored as a string",
        mutate(tiny, lambda l: set_kv(l, "gemma3.block_count", STRING, encode_string(b"2"))),
        [r"'gemma3\.block_count' has type string, expected an integer"])
    add("unknown_keys_all_types", "extra keys of every scalar type, a string array and an empty key",
        mutate(tiny, lambda l: [set_kv(l, f"test.{t}", t, scalar(t, 1)) for t in SCALAR_FORMATS]
               + [set_kv(l, "", UINT8, scalar(UINT8, 0)), set_kv(l, "test.strings", ARRAY, string_array([b"", b"x"]))]),
        loads=True)

    # Duplicates.
    add("duplicate_key", "general.name renamed to general.architecture",
        mutate(tiny, lambda l: setattr(l.kv("general.name"), "key", b"general.architecture")),
        [r"duplicate metadata key 'general\.architecture'"])
    add("duplicate_tensor", "blk.0.attn_norm.weight renamed to output_norm.weight (same shape)",
        mutate(tiny, lambda l: setattr(l.tensor("blk.0.attn_norm.weight"), "name", b"output_norm.weight")),
        [r"duplicate tensor name 'output_norm\.weight'"])

    # Offsets: out of range, near 2^64, misaligned, overlapping, leaving gaps.
    def last_offset(value_of):
        def change(layout):
            last = layout.tensors[-1]
            last.offset = value_of(layout)
        return change

    def data_bytes(layout):
        return sum(len(pad(t.data, 32)) for t in layout.tensors)

    add("offset_past_end", "the last tensor placed one alignment past the end of the data",
        mutate(tiny, last_offset(lambda l: data_bytes(l) + 32)),
        [r"tensor 'blk\.1\.ffn_down\.weight' \(\d+ bytes at data offset \d+\) extends past the end of the file"])
    add("offset_near_2_64", "the last tensor's offset 2^64 - 32",
        mutate(tiny, last_offset(lambda l: 2**64 - 32)),
        [r"tensor 'blk\.1\.ffn_down\.weight' \(\d+ bytes at data offset 18446744073709551584\) extends past"])
    add("offset_misaligned", "a tensor offset one byte past a multiple of the alignment",
        patch_tensor_entry(tiny, "output_norm.weight", "<Q", 1, extra=8 + 18 + 4 + 8 + 4),
        [r"tensor 'output_norm\.weight' data offset 1 is not a multiple of the alignment 32"])

    def overlap(layout):
        offsets = []
        position = 0
        for t in layout.tensors:
            offsets.append(position)
            position += len(pad(t.data, 32))
        for t, offset in zip(layout.tensors, offsets):
            t.offset = offset
        layout.tensors[2].offset = layout.tensors[1].offset

    add("offset_overlap", "two tensors at the same offset", mutate(tiny, overlap), [r"overlap in the data section"])

    def gap(layout):
        position = 0
        for index, t in enumerate(layout.tensors):
            t.offset = position + (32 if index >= 5 else 0)
            position += len(pad(t.data, 32))

    add("offset_gap", "32 unused bytes between two tensors",
        mutate(tiny, gap, trailing=b"\0" * 32),
        [r"is followed by tensor '[^']+' at data offset \d+, expected \d+; the tensor's type or shape does not match"])

    def shift_all(layout):
        position = 32
        for t in layout.tensors:
            t.offset = position
            position += len(pad(t.data, 32))

    add("offset_first_not_zero", "every tensor shifted by one alignment",
        mutate(tiny, shift_all, trailing=b"\0" * 32), [r"the first tensor in the data section, '[^']+', starts at data offset 32, expected 0"])
    for alignment, vtype, expected in [(0, UINT32, r"must be a power of two up to 2\^20, got 0"),
                                       (3, UINT32, r"must be a power of two up to 2\^20, got 3"),
                                       (1 << 21, UINT32, r"must be a power of two up to 2\^20, got 2097152"),
                                       (-32, INT32, r"must be a power of two up to 2\^20, got 18446744073709551584"),
                                       (32.0, FLOAT32, r"general\.alignment has type float32, expected an unsigned integer")]:
        add(f"alignment_{alignment}_{vtype}", f"general.alignment {alignment!r} of type {vtype}",
            mutate(tiny, lambda l, a=alignment, t=vtype: set_kv(l, "general.alignment", t, scalar(t, a))), [expected])
    add("alignment_4096", "general.alignment 4096 while the tensors are packed at 32",
        mutate(tiny, lambda l: set_kv(l, "general.alignment", UINT32, scalar(UINT32, 4096))),
        [r"data offset \d+ is not a multiple of the alignment 4096"])

    # Shapes.
    for n_dims in [0, 5, 0xFFFFFFFF]:
        add(f"n_dims_{n_dims}", f"token_embd.weight with {n_dims} dimensions",
            patch_tensor_entry(tiny, "token_embd.weight", "<I", n_dims, extra=8 + 17),
            [rf"tensor 'token_embd\.weight' has {n_dims} dimensions \(expected 1 to 4\)"])
    add("dimension_zero", "a dimension of 0",
        mutate(tiny, lambda l: setattr(l.tensor("blk.0.ffn_up.weight"), "dims", [64, 0])),
        [r"tensor 'blk\.0\.ffn_up\.weight' has dimension 0 that is zero"])
    for dims in [[2**32, 2**32], [2**63, 1], [2**21, 2**21, 2**21]]:
        add(f"shape_overflow_{'x'.join(str(d) for d in dims)}", f"dimensions {dims} whose product overflows int64",
            mutate(tiny, lambda l, d=dims: setattr(l.tensor("blk.0.ffn_up.weight"), "dims", d)),
            [r"tensor 'blk\.0\.ffn_up\.weight' has dimension \d+ that is zero or makes the element count overflow"],
            hostile_count=True)
    add("byte_size_overflow", "2^62 float32 elements: the element count fits, the byte size does not",
        mutate(tiny, lambda l: setattr(l.tensor("blk.0.ffn_up.weight"), "dims", [2**40, 2**22])),
        [r"tensor 'blk\.0\.ffn_up\.weight' byte size overflows"], hostile_count=True)
    add("shape_larger_than_file", "a 2^20 x 2^20 float32 tensor in a small file",
        mutate(tiny, lambda l: setattr(l.tensor("blk.1.ffn_down.weight"), "dims", [2**20, 2**20])),
        [r"tensor 'blk\.1\.ffn_down\.weight' \(4398046511104 bytes at data offset \d+\) extends past the end"],
        hostile_count=True)
    add("shape_transposed", "ffn_gate stored as [128, 64] instead of [64, 128] (same bytes)",
        mutate(tiny, lambda l: setattr(l.tensor("blk.0.ffn_gate.weight"), "dims", [128, 64])),
        [r"tensor 'blk\.0\.ffn_gate\.weight' has shape \[128, 64\], expected \[64, 128\]"])
    add("embedding_width_mismatch", "gemma3.embedding_length 32 while token_embd.weight is 64 wide",
        mutate(tiny, lambda l: set_kv(l, "gemma3.embedding_length", UINT32, scalar(UINT32, 32))),
        [r"tensor 'token_embd\.weight' must have shape \[32, vocab\]"])

    # Tensor types: unknown, unsupported, not matching the bytes stored.
    for ggml_type in [4, 5, 20, 31, 39, 0xFFFFFFFF]:
        add(f"tensor_type_{ggml_type}", f"output_norm.weight of ggml type {ggml_type}",
            mutate(tiny, lambda l, g=ggml_type: setattr(l.tensor("output_norm.weight"), "ggml_type", g)),
            [rf"tensor 'output_norm\.weight' has unknown ggml type {ggml_type}"])
    add("tensor_type_block_mismatch", "a 64-element vector declared q4_K (256-element blocks)",
        mutate(tiny, lambda l: setattr(l.tensor("output_norm.weight"), "ggml_type", Q4_K)),
        [r"tensor 'output_norm\.weight' row length 64 is not a multiple of the q4_K block size 256"])
    add("tensor_type_smaller_than_bytes", "a float32 matrix declared f16: half its bytes are left over",
        mutate(tiny, lambda l: setattr(l.tensor("blk.0.ffn_gate.weight"), "ggml_type", F16)),
        [r"tensor 'blk\.0\.ffn_gate\.weight' \(f16, 16384 bytes at data offset \d+\) is followed by tensor"])
    add("tensor_type_larger_than_bytes", "a float16 matrix declared float32: it runs into the next tensor",
        mutate(lambda s: s.tiny("F16"), lambda l: setattr(l.tensor("blk.0.ffn_gate.weight"), "ggml_type", F32)),
        [r"overlap in the data section|extends past the end"])

    def q8_1(name):
        def change(layout):
            t = layout.tensor(name)
            t.ggml_type = Q8_1
            t.data = bytes(math.prod(t.dims) // 32 * 36)
        return change

    add("matrix_q8_1", "ffn_up stored as q8_1, which ggml uses only for activations",
        mutate(tiny, q8_1("blk.0.ffn_up.weight")),
        [r"tensor 'blk\.0\.ffn_up\.weight' has type q8_1, which this runtime cannot run"])
    add("norm_q8_1", "a norm vector stored as q8_1", mutate(tiny, q8_1("blk.0.attn_norm.weight")),
        [r"tensor 'blk\.0\.attn_norm\.weight'.*q8_1"])

    # Missing tensors and keys, wrong architecture, vocabulary that disagrees with the embedding.
    for name in ["token_embd.weight", "output_norm.weight", "blk.1.attn_k_norm.weight", "blk.0.ffn_down.weight"]:
        add(f"missing_{name.replace('.', '_')}", f"{name} left out",
            mutate(tiny, lambda l, n=name: drop_tensor(l, n)),
            [rf"required tensor '{name.replace('.', chr(92) + '.')}' is missing"])
    for key in ["general.architecture", "gemma3.block_count", "gemma3.attention.head_count",
                "tokenizer.ggml.tokens", "tokenizer.ggml.model"]:
        add(f"missing_{key.replace('.', '_')}", f"{key} left out", mutate(tiny, lambda l, k=key: drop_kv(l, k)),
            [rf"required metadata key '{key.replace('.', chr(92) + '.')}' is missing"])
    for architecture in [b"llama", b"gemma2", b""]:
        add(f"architecture_{architecture.decode() or 'empty'}", f"general.architecture {architecture!r}",
            mutate(tiny, lambda l, a=architecture: set_kv(l, "general.architecture", STRING, encode_string(a))),
            [rf"architecture '{architecture.decode()}' is not supported"])
    add("real_architecture_llama", "the default model's header with architecture 'llama' (same length: 'gemma3' -> 'llama3')",
        mutate(real, lambda l: set_kv(l, "general.architecture", STRING, encode_string(b"llama3"))),
        [r"architecture 'llama3' is not supported"], real=True)

    def drop_last_token(layout):
        pieces = string_array_items(layout.kv("tokenizer.ggml.tokens"))[:-1]
        layout.kv("tokenizer.ggml.tokens").payload = string_array(pieces)
        for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"]:
            element_type, values = numeric_array_items(layout.kv(key))
            layout.kv(key).payload = array(element_type, values[:-1])

    add("vocabulary_smaller_than_embedding", "the vocabulary one token shorter than the embedding",
        mutate(tiny, drop_last_token), [r"the embedding has 272 rows but the tokenizer has 271 tokens"])

    def drop_last_score(layout):
        element_type, values = numeric_array_items(layout.kv("tokenizer.ggml.scores"))
        layout.kv("tokenizer.ggml.scores").payload = array(element_type, values[:-1])

    add("tokenizer_arrays_disagree", "one score fewer than tokens", mutate(tiny, drop_last_score),
        [r"tokenizer arrays disagree: 272 tokens, 271 scores, 272 token types"])

    # Configuration values out of range.
    for key, vtype, value, expected in [
        ("gemma3.block_count", UINT32, 0, r"'gemma3\.block_count' is 0, expected 1 to 1024"),
        ("gemma3.block_count", UINT64, U64_MAX, r"'gemma3\.block_count' is 18446744073709551615, expected 1 to 1024"),
        ("gemma3.block_count", INT32, -1, r"'gemma3\.block_count' is negative \(-1\)"),
        ("gemma3.context_length", UINT32, 0, r"'gemma3\.context_length' is 0, expected 1 to"),
        ("gemma3.attention.head_count_kv", UINT32, 3, r"attention\.head_count 2 is not a multiple of attention\.head_count_kv 3"),
        ("gemma3.attention.key_length", UINT32, 33, r"attention\.value_length 32 differs from attention\.key_length 33"),
        ("gemma3.attention.layer_norm_rms_epsilon", FLOAT32, float("nan"),
         r"gemma3\.attention\.layer_norm_rms_epsilon is nan, expected a number in \(0, 1\)"),
        ("gemma3.attention.layer_norm_rms_epsilon", FLOAT32, 0.0,
         r"gemma3\.attention\.layer_norm_rms_epsilon is 0, expected a number in \(0, 1\)"),
        ("gemma3.rope.freq_base", FLOAT32, float("nan"), r"gemma3\.rope\.freq_base is nan, expected a finite number > 1"),
        ("gemma3.rope.freq_base", FLOAT32, float("inf"), r"gemma3\.rope\.freq_base is inf, expected a finite number > 1"),
        ("gemma3.rope.scaling.factor", FLOAT32, 0.5, r"gemma3\.rope\.scaling\.factor is 0\.5, expected a finite number >= 1"),
        ("gemma3.attention.query_pre_attn_scalar", FLOAT32, float("inf"),
         r"gemma3\.attention\.query_pre_attn_scalar is inf, expected a finite number > 0"),
        ("tokenizer.ggml.bos_token_id", UINT32, 99999, r"tokenizer\.ggml\.bos_token_id is 99999, outside the vocabulary of 272"),
        ("tokenizer.ggml.model", STRING, b"gpt2", r"tokenizer\.ggml\.model is 'gpt2', expected 'llama'"),
        ("gemma3.rope.scaling.type", STRING, b"yarn", r"rope\.scaling\.type 'yarn' is not supported"),
    ]:
        payload = encode_string(value) if vtype == STRING else scalar(vtype, value)
        label = value.decode() if isinstance(value, bytes) else value
        add(f"config_{key.split('.', 1)[1].replace('.', '_')}_{label}", f"{key} = {label!r} ({vtype})",
            mutate(tiny, lambda l, k=key, t=vtype, p=payload: set_kv(l, k, t, p)), [expected])

    def token_type(value):
        def change(layout):
            element_type, values = numeric_array_items(layout.kv("tokenizer.ggml.token_type"))
            values[300 - 40] = value
            layout.kv("tokenizer.ggml.token_type").payload = array(element_type, values)
        return change

    def empty_piece(layout):
        pieces = string_array_items(layout.kv("tokenizer.ggml.tokens"))
        pieces[261] = b""
        layout.kv("tokenizer.ggml.tokens").payload = string_array(pieces)

    add("token_piece_empty", "an empty vocabulary piece", mutate(tiny, empty_piece),
        [r"token 261 has an empty piece"])

    # Non-finite weights and block scales.
    def set_element(name, index, fmt, value):
        def change(layout):
            t = layout.tensor(name)
            data = bytearray(t.data)
            struct.pack_into(fmt, data, index * struct.calcsize(fmt), value)
            t.data = bytes(data)
        return change

    nonfinite = r"contains NaN or infinite values"
    add("f32_inf_matrix", "+inf in a float32 matrix", mutate(tiny, set_element("blk.1.ffn_down.weight", 5, "<f", math.inf)),
        [rf"tensor 'blk\.1\.ffn_down\.weight' {nonfinite} \(at element 5\)"])
    add("f32_nan_norm", "NaN in a float32 norm vector", mutate(tiny, set_element("output_norm.weight", 63, "<f", math.nan)),
        [rf"tensor 'output_norm\.weight' {nonfinite} \(at element 63\)"])
    add("f16_nan_matrix", "NaN in a float16 matrix",
        mutate(lambda s: s.tiny("F16"), set_element("blk.0.attn_k.weight", 7, "<H", F16_NAN)),
        [rf"tensor 'blk\.0\.attn_k\.weight' {nonfinite} \(at element 7\)"])
    add("bf16_neg_inf_embedding", "-inf in a bfloat16 embedding",
        mutate(lambda s: s.tiny("BF16"), set_element("token_embd.weight", 1000, "<H", 0xFF80)),
        [rf"tensor 'token_embd\.weight' {nonfinite} \(at element 1000\)"])
    add("q8_0_nan_scale", "NaN scale in block 3 of a q8_0 matrix",
        nan_scale_in(lambda s: s.tiny("Q8_0"), "blk.0.attn_v.weight", 3, 0, F16_NAN),
        [rf"tensor 'blk\.0\.attn_v\.weight' {nonfinite} \(in the scale of the q8_0 block holding elements 96\.\.127\)"])
    add("q4_1_inf_min", "+inf min in block 0 of a q4_1 matrix",
        nan_scale_in(lambda s: s.tiny("Q4_1"), "blk.1.ffn_gate.weight", 0, 2, F16_INF),
        [rf"tensor 'blk\.1\.ffn_gate\.weight' {nonfinite} \(in the scale of the q4_1 block holding elements 0\.\.31\)"])
    for name, type_name, block, offset, bits in [
        ("blk.0.attn_output.weight", "q4_K", 0, 0, F16_NAN),
        ("blk.0.attn_output.weight", "q4_K", 7, 2, F16_INF),
        ("blk.0.ffn_down.weight", "q6_K", 2, 208, F16_NAN),
        ("token_embd.weight", "q8_0", 1000, 0, F16_NAN),
        ("blk.3.ffn_gate.weight", "q5_0", 5, 0, 0xFC00),
    ]:
        size = {"q4_K": 256, "q6_K": 256}.get(type_name, 32)
        first, last = block * size, block * size + size - 1
        add(f"real_{type_name}_{'d' if offset in (0, 208) else 'dmin'}_nonfinite_{name.split('.')[1]}",
            f"non-finite scale in block {block} of the default model's {name} ({type_name})",
            one(nan_scale_in(real, name, block, offset, bits, first=True)),
            [rf"tensor '{re_escape(name)}' {nonfinite} \(in the scale of the {type_name} block holding elements "
             rf"{first}\.\.{last}\)"], real=True)

    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AssertionError(f"duplicate case names: {duplicates}")
    return [_single(spec) for spec in specs]


def re_escape(text: str) -> str:
    return text.replace(".", r"\.")


def _single(spec: CaseSpec) -> CaseSpec:
    """Wrap makers that return one Blob into the list form."""
    make = spec.make

    def listed(sources: Sources) -> list[tuple[str, Blob]]:
        made = make(sources)
        return [("", made)] if isinstance(made, Blob) else made

    spec.make = listed
    return spec


def write_corpus(out_dir: Path, real_model: Path | None, names: set[str] | None = None) -> list[dict]:
    """Write every case's files to out_dir and return the manifest entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = Sources(out_dir, real_model)
    manifest = []
    for spec in case_specs():
        if names is not None and spec.name not in names:
            continue
        if spec.real and real_model is None:
            continue
        for suffix, blob in spec.make(sources):
            file_name = f"{spec.name}{'-' + suffix if suffix else ''}.gguf"
            blob.write(out_dir / file_name)
            manifest.append({"name": spec.name, "file": file_name, "description": spec.description,
                             "expect": spec.expect, "loads": spec.loads, "hostile_count": spec.hostile_count,
                             "known_bug": spec.known_bug})
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for the corpus files and manifest.json")
    parser.add_argument("--model", type=Path, default=None, help="real GGUF model to mutate (default: the default model)")
    parser.add_argument("--no-real", action="store_true", help="write only the cases made from tiny models")
    args = parser.parse_args()
    real_model = None
    if not args.no_real:
        if args.model is None:
            import gemma3_edge

            args.model = gemma3_edge.default_model_path()
        real_model = args.model
    manifest = write_corpus(args.out_dir, real_model)
    (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(manifest)} files for {len({m['name'] for m in manifest})} cases to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
