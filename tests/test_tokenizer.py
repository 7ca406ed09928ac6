"""The C++ tokenizer against sentencepiece built from the same GGUF vocabulary (tests/sp_oracle.py).

Every encode check compares ids with sentencepiece 0.2 itself; decode and streaming checks compare
with the input text and with Python's UTF-8 decoder. Needs the Gemma 3 270M GGUF package,
sentencepiece, gguf and protobuf; the transformers comparison is skipped without transformers.
"""

from __future__ import annotations

import codecs
import random
import re
import subprocess
from pathlib import Path

import pytest

import sp_oracle
from gemma3_edge import _core

REPO_ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = REPO_ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"

SPACE_SYMBOL = "\u2581"
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 2, 1, 3, 0
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106

HARD_CASES = [
    "",
    " ",
    "  ",
    "a  b",
    "a   b",
    " leading",
    "trailing ",
    "  both  ",
    " " * 31,
    " " * 32,
    " " * 40,
    " " * 100 + "x",
    "\t",
    "\t\tindented",
    "a\tb\t\tc",
    "\t  \t \t",
    "\n",
    "\n\n\n",
    "\n" * 40,
    "line1\nline2\r\nline3\r",
    " \n \n  \n",
    "0",
    "12345",
    "3.14159",
    "1,000,000",
    "2024-01-01T12:00:00Z",
    "x86_64 and 3rd",
    "9" * 60,
    "\u0661\u0662\u0663 and \u09e8\u09e6\u09e8\u09ea",  # Arabic-Indic and Bengali digits
    "\uff11\uff12\uff13",  # fullwidth digits
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family, ZWJ sequence
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7",  # skin tone, regional indicators
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",  # Japanese
    "\u4e2d\u6587\u6d4b\u8bd5\uff0c\u6807\u70b9\u3002",  # Chinese with punctuation
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",  # Korean
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",  # Arabic
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",  # Thai
    "\u0928\u092e\u0938\u094d\u0924\u0947",  # Devanagari
    "e\u0301 cafe\u0301 \u00e9",  # combining acute versus precomposed
    "Z\u0351\u036b\u0343\u036a\u0302a\u0351\u036b",  # stacked combining marks
    "A\u030a \u00c5 \u212b",  # three spellings of A with ring
    "<start_of_turn>user\nhi<end_of_turn>",
    "<start_of_turn>model\n",
    "<<start_of_turn>>",
    "<start_of_turn",
    "<0x41>",
    "<unk>",
    "<bos><eos><pad><mask>",
    "<unused0><unused6241>",
    "<start_of_image><end_of_image>",
    "[multimodal]",
    "<b>bold</b> <table><tr><td>x</td></tr></table>",
    "\u2581",
    "a\u2581b \u2581\u2581 c",
    "def f(x):\n    return x ** 2\n",
    "int main() {\n\treturn 0;\n}\n",
    "https://example.com/path?q=1&r=%20#frag",
    "\x00\x01\x7f",
    "\u200b\ufeff\u00ad",  # zero-width space, BOM, soft hyphen
    "\ue000\U000f0000\U0010ffff",  # private use: byte fallback
    "\ufffd",
    "a" * 1000,
    "ab" * 500,
    "The quick brown fox jumps over the lazy dog. " * 20,
]

# Alphabet for the random strings: ASCII, whitespace runs, digits, pieces that are user-defined
# or control tokens in Gemma's vocabulary, and several scripts.
FUZZ_ATOMS = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGH0123456789.,;:!?'\"()-_<>/[]{}#@")
    + [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u2581"]
    + ["<b>", "</b>", "<unk>", "<start_of_turn>", "<0x41>", "[multimodal]"]
    + list("\u00e9\u00fc\u00df\u0301\u0627\u05d0\u0e01\u4e2d\u6587\u65e5\uac00\u0416")
    + ["\U0001f600", "\u200d", "\U0001f469", "\ue000", "\u09e8"]
)


@pytest.fixture(scope="session")
def vocab():
    pytest.importorskip("sentencepiece")
    pytest.importorskip("gguf")
    try:
        path = sp_oracle.default_model_path()
    except FileNotFoundError as error:
        pytest.skip(f"Gemma 3 GGUF model not available: {error}")
    return sp_oracle.read_gguf_vocab(path)


@pytest.fixture(scope="session")
def sp(vocab):
    pytest.importorskip(
        "google.protobuf", reason="sentencepiece_model_pb2 needs protobuf: pip install protobuf"
    )
    return sp_oracle.sentencepiece_from_vocab(vocab)


@pytest.fixture(scope="session")
def tok(vocab):
    return sp_oracle.core_tokenizer_from_vocab(vocab)


@pytest.fixture(scope="session")
def specials(vocab):
    return sp_oracle.SpecialSplitter(vocab)


@pytest.fixture(scope="session")
def wikitext() -> str:
    if not WIKITEXT.is_file():
        pytest.skip(f"WikiText-2 test file not found at {WIKITEXT}")
    return WIKITEXT.read_text(encoding="utf-8")


def decoded(text: str) -> bytes:
    """Return what decode(encode(text)) gives: the text itself, except that U+2581 comes back
    as a space because sentencepiece encodes both to the same pieces."""
    return text.replace(SPACE_SYMBOL, " ").encode("utf-8")


def fuzz_strings(seed: int, count: int, max_atoms: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(FUZZ_ATOMS, k=rng.randint(0, max_atoms))) for _ in range(count)]


def first_mismatch(texts, ours, theirs) -> str:
    for text, a, b in zip(texts, ours, theirs):
        if a != b:
            return f"text {text[:200]!r}: ours {a[:40]} vs reference {b[:40]}"
    return "none"


def stream(tok, ids) -> list[str]:
    decoder = _core.StreamingDecoder(tok)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def byte_ids(tok, data: bytes) -> list[int]:
    return [tok.piece_to_id(f"<0x{b:02X}>") for b in data]


# --- vocabulary ------------------------------------------------------------------------------


def test_vocabulary_matches_sentencepiece(tok, sp, vocab):
    assert tok.vocab_size == sp.get_piece_size() == len(vocab.pieces) == 262144
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (BOS_ID, EOS_ID, UNK_ID, PAD_ID)
    differing = [i for i in range(tok.vocab_size) if tok.id_to_piece(i) != sp.id_to_piece(i)]
    assert differing == []
    differing_types = [i for i in range(tok.vocab_size) if tok.token_type(i) != vocab.types[i]]
    assert differing_types == []


def test_model_tokenizer_matches_gguf_reader(tok, vocab):
    # The runtime's tokenizer comes from the C++ GGUF reader; `tok` from gguf.GGUFReader.
    model_tokenizer = _core.Model(str(sp_oracle.default_model_path())).tokenizer
    assert model_tokenizer.vocab_size == tok.vocab_size
    ids = range(tok.vocab_size)
    assert [model_tokenizer.id_to_piece(i) for i in ids] == [tok.id_to_piece(i) for i in ids]
    assert [model_tokenizer.token_type(i) for i in ids] == [tok.token_type(i) for i in ids]
    assert [model_tokenizer.score(i) for i in ids] == [tok.score(i) for i in ids]
    assert (model_tokenizer.bos_id, model_tokenizer.eos_id) == (tok.bos_id, tok.eos_id)
    assert (model_tokenizer.unk_id, model_tokenizer.pad_id) == (tok.unk_id, tok.pad_id)


def test_piece_to_id_round_trip(tok):
    missing = [i for i in range(tok.vocab_size) if tok.piece_to_id(tok.id_to_piece(i)) != i]
    assert missing == []
    assert tok.piece_to_id("no such piece \U0001f600\U0001f600") == -1


def test_whitespace_pieces_accept_both_spellings(tok, vocab):
    # The GGUF file stores pieces 138.. as plain spaces; sentencepiece spells them with U+2581.
    assert vocab.pieces[138] == b"  "
    assert tok.id_to_piece(138) == "\u2581\u2581"
    assert tok.piece_to_id("  ") == 138
    assert tok.piece_to_id("\u2581\u2581") == 138
    assert tok.piece(138) == b"  "


def test_special_ids_are_control_tokens(tok):
    assert tok.piece_to_id("<start_of_turn>") == START_OF_TURN_ID
    assert tok.piece_to_id("<end_of_turn>") == END_OF_TURN_ID
    for token_id in (PAD_ID, EOS_ID, BOS_ID, UNK_ID, START_OF_TURN_ID, END_OF_TURN_ID):
        assert tok.token_type(token_id) == sp_oracle.CONTROL
        assert tok.piece(token_id) == b""
    assert tok.piece(START_OF_TURN_ID, render_control=True) == b"<start_of_turn>"


def test_byte_pieces_decode_to_their_byte(tok):
    for value in range(256):
        token_id = tok.piece_to_id(f"<0x{value:02X}>")
        assert tok.token_type(token_id) == sp_oracle.BYTE
        assert tok.piece(token_id) == bytes([value])


# --- encode against sentencepiece ------------------------------------------------------------


@pytest.mark.parametrize("text", HARD_CASES, ids=range(len(HARD_CASES)))
def test_hard_case_matches_sentencepiece(tok, sp, text):
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert tok.decode(ids) == decoded(text)
    assert tok.decode(ids).decode("utf-8") == sp.decode(ids)


def test_bytes_input_equals_str_input(tok):
    for text in HARD_CASES:
        assert tok.encode(text.encode("utf-8")) == tok.encode(text)


def test_random_strings_match_sentencepiece(tok, sp):
    texts = fuzz_strings(seed=1234, count=3000, max_atoms=40)
    ours = [tok.encode(text) for text in texts]
    theirs = [sp.encode(text) for text in texts]
    assert ours == theirs, first_mismatch(texts, ours, theirs)
    assert all(tok.decode(ids) == decoded(text) for text, ids in zip(texts, ours))


def test_wikitext_lines_match_sentencepiece(tok, sp, wikitext):
    lines = wikitext.splitlines(keepends=True)
    ours = [tok.encode(line) for line in lines]
    theirs = [sp.encode(line) for line in lines]
    assert ours == theirs, first_mismatch(lines, ours, theirs)


def test_wikitext_chunks_match_sentencepiece(tok, sp, wikitext):
    chunks = [wikitext[start : start + 65536] for start in range(0, len(wikitext), 65536)]
    ours = [tok.encode(chunk) for chunk in chunks]
    theirs = [sp.encode(chunk) for chunk in chunks]
    assert ours == theirs, first_mismatch(chunks, ours, theirs)


def test_wikitext_whole_file_round_trip(tok, sp, wikitext):
    ids = tok.encode(wikitext)
    assert ids == sp.encode(wikitext)
    assert tok.decode(ids) == wikitext.encode("utf-8")


def test_add_bos(tok, sp):
    assert tok.encode("Hello", add_bos=True) == [BOS_ID] + sp.encode("Hello")
    assert tok.encode("", add_bos=True) == [BOS_ID]
    assert tok.encode("") == []


# --- special tokens ---------------------------------------------------------------------------


def test_chat_turn_with_special_parsing(tok, sp):
    ids = tok.encode("<start_of_turn>user\nhi<end_of_turn>", parse_special=True)
    assert ids == [START_OF_TURN_ID] + sp.encode("user\nhi") + [END_OF_TURN_ID]


def test_chat_turn_without_special_parsing(tok, sp):
    text = "<start_of_turn>user\nhi<end_of_turn>"
    ids = tok.encode(text)
    assert START_OF_TURN_ID not in ids
    assert END_OF_TURN_ID not in ids
    assert ids == sp.encode(text)


@pytest.mark.parametrize("text", HARD_CASES, ids=range(len(HARD_CASES)))
def test_parse_special_matches_reference(tok, sp, specials, text):
    assert tok.encode(text, parse_special=True) == specials.encode(sp, text)


def test_parse_special_random_strings(tok, sp, specials):
    texts = fuzz_strings(seed=99, count=1000, max_atoms=30)
    ours = [tok.encode(text, parse_special=True) for text in texts]
    theirs = [specials.encode(sp, text) for text in texts]
    assert ours == theirs, first_mismatch(texts, ours, theirs)


def test_parse_special_literal_unk_and_byte_piece(tok):
    assert tok.encode("<unk>", parse_special=True) == [UNK_ID]
    assert tok.encode("<unused6241>", parse_special=True) == [262143]
    # Byte pieces are not control tokens, so "<0x41>" stays text.
    assert tok.encode("<0x41>", parse_special=True) == tok.encode("<0x41>")
    assert tok.piece_to_id("<0x41>") not in tok.encode("<0x41>", parse_special=True)


# --- invalid input -----------------------------------------------------------------------------


def test_invalid_utf8_uses_byte_fallback(tok, sp):
    ids = tok.encode(b"a\xffb")
    assert ids == tok.encode("a") + byte_ids(tok, b"\xff") + tok.encode("b")
    # sentencepiece instead turns each invalid byte into U+FFFD, losing the input bytes.
    assert sp.encode(b"a\xffb") == tok.encode("a\ufffdb")


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\x80", b"\xc0\xaf", b"\xe2\x96", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"x\xf0\x9f"],
    ids=["ff", "lone-continuation", "overlong", "truncated", "surrogate", "above-10ffff", "cut-emoji"],
)
def test_invalid_utf8_round_trip(tok, data):
    ids = tok.encode(data)
    assert tok.decode(ids) == data
    assert all(tok.token_type(i) == sp_oracle.BYTE for i in ids if tok.piece(i) != b"x")


def test_random_bytes_round_trip(tok):
    rng = random.Random(7)
    for _ in range(500):
        data = bytes(rng.choice([0x20, 0x41, 0x0A, 0xC3, 0xA9, 0xE2, 0x96, 0x81, 0xF0, 0x9F, 0xFF])
                     for _ in range(rng.randint(0, 30)))
        assert tok.decode(tok.encode(data)) == data.replace(SPACE_SYMBOL.encode("utf-8"), b" ")


def test_lone_surrogate_rejected(tok):
    with pytest.raises(ValueError, match="lone surrogate at index 1"):
        tok.encode("a\ud800b")


def test_encode_rejects_non_text(tok):
    with pytest.raises(TypeError, match="must be str or bytes"):
        tok.encode(123)


def test_ids_out_of_range_rejected(tok):
    with pytest.raises(IndexError, match="262144"):
        tok.decode([5, 262144])
    with pytest.raises(IndexError, match="-1"):
        tok.piece(-1)
    with pytest.raises(IndexError):
        tok.token_type(1 << 20)
    with pytest.raises(IndexError):
        _core.StreamingDecoder(tok).push(262144)


# --- streaming decoder -------------------------------------------------------------------------


@pytest.mark.parametrize("text", HARD_CASES, ids=range(len(HARD_CASES)))
def test_streaming_decoder_reproduces_text(tok, text):
    ids = tok.encode(text)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    expected = [decoder.decode(tok.piece(i)) for i in ids] + [decoder.decode(b"", final=True)]
    outputs = stream(tok, ids)
    assert outputs == expected
    assert "".join(outputs).encode("utf-8") == decoded(text)


def test_streaming_decoder_holds_partial_characters(tok):
    ids = byte_ids(tok, "\U0001f600".encode("utf-8"))
    assert stream(tok, ids) == ["", "", "", "\U0001f600", ""]


def test_streaming_decoder_flush_replaces_incomplete(tok):
    ids = tok.encode("ok") + byte_ids(tok, b"\xe2\x96")
    assert stream(tok, ids) == ["ok", "", "", "\ufffd"]


def test_streaming_decoder_matches_python_on_random_bytes(tok):
    # Reference: bytes.decode("utf-8", "replace"), one U+FFFD per maximal invalid subpart. Python's
    # incremental decoder gives a lower bound on what must be out after each byte (it waits for
    # the third byte of ED A0..BF before replacing, where ours replaces at once).
    rng = random.Random(11)
    pool = [0x41, 0x20, 0x80, 0xA9, 0xBF, 0xC2, 0xC3, 0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0x9F, 0x90, 0xFF]
    for _ in range(500):
        data = bytes(rng.choice(pool) for _ in range(rng.randint(0, 24)))
        outputs = stream(tok, byte_ids(tok, data))
        assert "".join(outputs) == data.decode("utf-8", "replace"), data
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        ours_so_far = python_so_far = ""
        for value, output in zip(data, outputs):
            ours_so_far += output
            python_so_far += decoder.decode(bytes([value]))
            assert ours_so_far.startswith(python_so_far), data


def test_streaming_decoder_skips_control_tokens(tok):
    ids = [BOS_ID] + tok.encode("hi") + [END_OF_TURN_ID]
    assert "".join(stream(tok, ids)) == "hi"


# --- small made-up vocabularies ------------------------------------------------------------------


def made_up_vocab(extra: list[tuple[str, float, int]]) -> sp_oracle.GgufVocab:
    specials = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2)]
    byte_pieces = [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    entries = specials + byte_pieces + extra
    return sp_oracle.GgufVocab(
        pieces=[piece.encode("utf-8") for piece, _, _ in entries],
        scores=[score for _, score, _ in entries],
        types=[kind for _, _, kind in entries],
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        pad_id=PAD_ID,
    )


# Equal scores test the leftmost tie-break, unused pieces (type 5) test sentencepiece's
# resegmentation, "e" is missing so it takes byte fallback, and "<u>" is user-defined.
MADE_UP_PIECES = [
    ("a", -10.0, 1), ("b", -10.0, 1), ("c", -10.0, 1), ("d", -10.0, 1), ("\u2581", -10.0, 1),
    ("ab", -1.0, 1), ("bc", -1.0, 1), ("abc", -2.0, 1), ("cd", -0.5, 5), ("abcd", -3.0, 1),
    ("\u2581a", -1.5, 1), ("dd", -1.0, 1), ("ddd", -2.0, 5), ("dddd", -2.5, 1), ("da", -0.7, 1),
    ("<u>", 0.0, 4), ("\u2581\u2581", 0.0, 4), ("<c>", 0.0, 3), ("bb", -4.0, 1), ("bbb", -3.5, 1),
]


@pytest.mark.parametrize("with_unused", [True, False], ids=["unused-pieces", "no-unused-pieces"])
def test_made_up_vocab_matches_sentencepiece(with_unused):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf", reason="sentencepiece_model_pb2 needs protobuf")
    entries = [(p, s, t if with_unused or t != 5 else 1) for p, s, t in MADE_UP_PIECES]
    vocab = made_up_vocab(entries)
    processor = sp_oracle.sentencepiece_from_vocab(vocab)
    tokenizer = sp_oracle.core_tokenizer_from_vocab(vocab)
    rng = random.Random(5)
    atoms = ["a", "b", "c", "d", "e", " ", "  ", "<u>", "<c>", "\u00e9"]
    texts = ["".join(rng.choices(atoms, k=rng.randint(0, 16))) for _ in range(3000)]
    ours = [tokenizer.encode(text) for text in texts]
    theirs = [processor.encode(text) for text in texts]
    assert ours == theirs, first_mismatch(texts, ours, theirs)
    assert all(tokenizer.decode(ids) == decoded(text) for text, ids in zip(texts, ours))


def test_cpp_tokenizer_unit_tests():
    executables = sorted(REPO_ROOT.glob("build/*/test_tokenizer"))
    if not executables:
        pytest.skip("tests/cpp/test_tokenizer.cpp is not built (build the package first)")
    result = subprocess.run([str(executables[0])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.strip().endswith(" 0 failed")


# --- construction errors -----------------------------------------------------------------------


def small_vocab():
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["a", "b"]
    types = [3, 3, 3, 2] + [6] * 256 + [1, 1]
    scores = [0.0] * len(pieces)
    return pieces, scores, types


def test_constructor_rejects_mismatched_lengths():
    pieces, scores, types = small_vocab()
    with pytest.raises(ValueError, match="262 pieces but 261 scores"):
        _core.Tokenizer(pieces, scores[:-1], types)


def test_constructor_rejects_bad_type():
    pieces, scores, types = small_vocab()
    types[-1] = 9
    with pytest.raises(ValueError, match="token 261 has type 9"):
        _core.Tokenizer(pieces, scores, types)


def test_constructor_rejects_bad_byte_piece():
    pieces, scores, types = small_vocab()
    types[-1] = 6
    with pytest.raises(ValueError, match="byte token 261 is spelled 'b'"):
        _core.Tokenizer(pieces, scores, types)


def test_constructor_rejects_duplicate_spellings():
    pieces, scores, types = small_vocab()
    pieces[-2:] = ["  ", "\u2581\u2581"]
    with pytest.raises(ValueError, match="tokens 260 and 261 are both"):
        _core.Tokenizer(pieces, scores, types)


def test_constructor_rejects_special_id_out_of_range():
    pieces, scores, types = small_vocab()
    with pytest.raises(ValueError, match="bos_id 999 is outside"):
        _core.Tokenizer(pieces, scores, types, bos_id=999)
    with pytest.raises(ValueError, match="empty"):
        _core.Tokenizer([], [], [])


# --- transformers ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hf_tokenizer(vocab):
    transformers = pytest.importorskip("transformers")
    path = sp_oracle.default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_transformers_agrees_on_wikitext(tok, hf_tokenizer, wikitext):
    lines = wikitext.splitlines(keepends=True)
    theirs = hf_tokenizer(lines, add_special_tokens=False)["input_ids"]
    ours = [tok.encode(line, parse_special=True) for line in lines]
    assert ours == theirs, first_mismatch(lines, ours, theirs)


# transformers 5.25's GGUF conversion splits runs of 32 or more spaces differently from
# sentencepiece (e.g. 40 spaces: 16 + 24 instead of 31 + 9); sentencepiece is the reference.
LONG_SPACE_RUN = re.compile(" {32,}")


def test_transformers_agrees_on_hard_cases(tok, hf_tokenizer):
    texts = [t for t in HARD_CASES + fuzz_strings(seed=1234, count=3000, max_atoms=40)
             if not LONG_SPACE_RUN.search(t)]
    theirs = hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    ours = [tok.encode(text, parse_special=True) for text in texts]
    assert ours == theirs, first_mismatch(texts, ours, theirs)
