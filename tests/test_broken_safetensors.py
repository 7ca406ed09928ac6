"""The converter's safetensors reader (quantize/source.py) on broken and hostile files: each must
raise SafetensorsError (a ValueError) naming the file, the tensor and field at fault and what was
expected, never another exception, a wrong array or a huge allocation."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gemma3_edge.quantize import source

GOOD = np.arange(6, dtype=np.float32).reshape(2, 3)


def write(path, header, data: bytes = GOOD.tobytes(), length: int | None = None) -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + encoded + data)


def entry(dtype="F32", shape=(2, 3), offsets=(0, 24)):
    return {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


# (id, writer of the file, fragments the message must contain)
CASES = [
    ("empty_file", lambda p: p.write_bytes(b""), ["0 bytes", "8-byte header length"]),
    ("seven_bytes", lambda p: p.write_bytes(b"\x10\0\0\0\0\0\0"), ["7 bytes", "truncated"]),
    ("header_length_max", lambda p: write(p, entry(), length=2**64 - 1), ["implausible"]),
    ("header_longer_than_file", lambda p: write(p, entry(), data=b"", length=4096), ["4096 bytes", "truncated"]),
    ("header_not_utf8", lambda p: write(p, b"\xff\xfe{}"), ["not UTF-8"]),
    ("header_not_json", lambda p: write(p, b"{not json"), ["not valid JSON"]),
    ("header_nested_too_deep", lambda p: write(p, b"[" * 100_000 + b"]" * 100_000), ["not valid JSON"]),
    ("header_json_list", lambda p: write(p, [1, 2]), ["JSON list", "expected an object"]),
    ("entry_not_object", lambda p: write(p, {"w": [0, 24]}), ["tensor w", "expected an object"]),
    ("entry_without_dtype", lambda p: write(p, {"w": {"shape": [2, 3], "data_offsets": [0, 24]}}),
     ["tensor w", "field dtype is None"]),
    ("dtype_unknown", lambda p: write(p, entry(dtype="F8_E4M3", shape=(24,))), ["tensor w", "dtype F8_E4M3", "expected F32"]),
    ("offsets_past_end", lambda p: write(p, entry(offsets=(0, 2**40))), ["tensor w", "data_offsets [0, 1099511627776]", "24 data bytes"]),
    ("offsets_reversed", lambda p: write(p, entry(offsets=(24, 0))), ["tensor w", "data_offsets [24, 0]"]),
    ("offsets_one_number", lambda p: write(p, entry(offsets=(24,))), ["tensor w", "field data_offsets", "[begin, end]"]),
    ("shape_disagrees_with_bytes", lambda p: write(p, entry(shape=(4, 3))), ["tensor w", "needs 48 bytes", "hold 24"]),
    ("shape_negative", lambda p: write(p, entry(shape=(-1,))), ["tensor w", "field shape is [-1]", "non-negative"]),
    ("shape_boolean", lambda p: write(p, entry(shape=(True, 3))), ["tensor w", "field shape"]),
    ("shape_huge", lambda p: write(p, entry(shape=(2**31, 2**31))), ["tensor w", "needs 18446744073709551616 bytes"]),
]


def load_all(path):
    st = source._SafetensorsFile(path)
    return {name: st.load(name) for name in st.entries}


def test_valid_file_loads(tmp_path):
    path = tmp_path / "good.safetensors"
    write(path, {"__metadata__": {"format": "pt"}, **entry()})
    loaded = load_all(path)
    assert list(loaded) == ["w"]
    np.testing.assert_array_equal(loaded["w"], GOOD)


def test_unloaded_dtype_still_opens(tmp_path):
    # A checkpoint may hold tensors of dtypes the converter never loads (int64 buffers, an fp8
    # vision tower): opening the file checks their byte ranges, and only loading them fails.
    path = tmp_path / "mixed.safetensors"
    header = {**entry(), "ids": {"dtype": "I64", "shape": [3], "data_offsets": [24, 48]}}
    write(path, header, data=GOOD.tobytes() + np.arange(3, dtype=np.int64).tobytes())
    st = source._SafetensorsFile(path)
    np.testing.assert_array_equal(st.load("w"), GOOD)
    with pytest.raises(source.SafetensorsError, match="tensor ids has dtype I64"):
        st.load("ids")


@pytest.mark.parametrize("make, fragments", [pytest.param(make, fragments, id=case_id)
                                             for case_id, make, fragments in CASES])
def test_broken_safetensors(tmp_path, make, fragments):
    path = tmp_path / "broken.safetensors"
    make(path)
    with pytest.raises(ValueError) as info:
        load_all(path)
    assert isinstance(info.value, source.SafetensorsError)
    message = str(info.value)
    assert message.startswith(f"{path}: "), f"the message does not name the file: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_broken_shard_named_by_open_source(tmp_path):
    # A checkpoint directory with one damaged shard: the error names that shard.
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    shard = checkpoint / "model-00001-of-00001.safetensors"
    write(shard, entry(offsets=(24, 0)))
    with pytest.raises(source.SafetensorsError, match="model-00001-of-00001.safetensors: tensor w"):
        source.open_source(checkpoint)
