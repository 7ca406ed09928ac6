"""The converter's safetensors reader (quantize/source.py) on broken and hostile files: each must
raise ValueError naming the file, never another exception, a wrong array or a huge allocation."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

source = pytest.importorskip("quantize.source")

# Proposed fix for every xfail below: validate in _SafetensorsFile.__init__ that the file has the
# 8-byte length, that the header fits in the file, decodes as UTF-8 JSON and is an object, and
# that each entry has a known dtype, a shape of non-negative ints and data_offsets with
# begin <= end <= data size and end - begin == prod(shape) * itemsize; raise
# ValueError(f"{path}: tensor {name}: ...") otherwise.
NO_VALIDATION = "quantize/source.py _SafetensorsFile trusts the header; see the proposed fix at the top of this file"

GOOD = np.arange(6, dtype=np.float32).reshape(2, 3)


def write(path, header, data: bytes = GOOD.tobytes(), length: int | None = None) -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + encoded + data)


def entry(dtype="F32", shape=(2, 3), offsets=(0, 24)):
    return {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


# (id, writer of the file, fragment the message must contain, xfail reason or None)
CASES = [
    ("empty_file", lambda p: p.write_bytes(b""), "", NO_VALIDATION),
    ("seven_bytes", lambda p: p.write_bytes(b"\x10\0\0\0\0\0\0"), "", NO_VALIDATION),
    ("header_length_max", lambda p: write(p, entry(), length=2**64 - 1), "implausible", None),
    ("header_longer_than_file", lambda p: write(p, entry(), data=b"", length=4096), "", NO_VALIDATION),
    ("header_not_utf8", lambda p: write(p, b"\xff\xfe{}"), "", NO_VALIDATION),
    ("header_not_json", lambda p: write(p, b"{not json"), "", NO_VALIDATION),
    ("header_json_list", lambda p: write(p, [1, 2]), "", NO_VALIDATION),
    ("entry_without_dtype", lambda p: write(p, {"w": {"shape": [2, 3], "data_offsets": [0, 24]}}), "w", NO_VALIDATION),
    ("dtype_unknown", lambda p: write(p, entry(dtype="F8_E4M3")), "dtype F8_E4M3", None),
    ("offsets_past_end", lambda p: write(p, entry(offsets=(0, 2**40))), "w", NO_VALIDATION),
    ("offsets_reversed", lambda p: write(p, entry(offsets=(24, 0))), "w", NO_VALIDATION),
    ("shape_disagrees_with_bytes", lambda p: write(p, entry(shape=(4, 3))), "w", NO_VALIDATION),
    ("shape_negative", lambda p: write(p, entry(shape=(-1,))), "w", NO_VALIDATION),
    ("shape_huge", lambda p: write(p, entry(shape=(2**31, 2**31))), "w", NO_VALIDATION),
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


@pytest.mark.parametrize("make, fragment", [
    pytest.param(make, fragment, id=case_id,
                 marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [])
    for case_id, make, fragment, reason in CASES
])
def test_broken_safetensors(tmp_path, make, fragment):
    path = tmp_path / "broken.safetensors"
    make(path)
    with pytest.raises(ValueError) as info:
        load_all(path)
    assert str(path) in str(info.value), f"the message does not name the file: {info.value}"
    assert fragment in str(info.value)
