"""Reference tokenizers for the tests, built from the vocabulary stored in a GGUF file.

`sentencepiece_from_vocab` rebuilds Gemma 3's SentencePiece model (BPE, byte fallback, split
digits, identity normalization, no dummy prefix) from tokenizer.ggml.tokens / scores /
token_type, so sentencepiece's own encoder serves as the oracle for ours. `SpecialSplitter` adds
the control-token parsing that sentencepiece lacks. sentencepiece_model_pb2 needs the protobuf
package.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

SPACE_MARK = "\u2581"  # SentencePiece writes ' ' as U+2581 in pieces and matches on it

# tokenizer.ggml.token_type values (SentencePiece's ModelProto.SentencePiece.Type numbering).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GgufVocab:
    pieces: list[bytes]  # raw GGUF strings (some runs of spaces use ' ' rather than U+2581)
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int


def default_model_path() -> Path:
    from gemma3_edge._default_model import default_model_path as locate

    return locate()


@functools.lru_cache(maxsize=2)
def read_gguf_vocab(path: str | Path) -> GgufVocab:
    """Read the tokenizer arrays and special ids of a GGUF file with gguf-py.

    GGUFReader parses every field up front (about 14 s for Gemma 3's 262,144 pieces on the
    2-core EPYC development machine), so results are cached per path.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))

    def scalar(key: str) -> int:
        field = reader.fields[key]
        return int(field.parts[field.data[0]][0])

    tokens = reader.fields["tokenizer.ggml.tokens"]
    scores = reader.fields["tokenizer.ggml.scores"]
    types = reader.fields["tokenizer.ggml.token_type"]
    return GgufVocab(
        pieces=[bytes(tokens.parts[i]) for i in tokens.data],
        scores=[float(scores.parts[i][0]) for i in scores.data],
        types=[int(types.parts[i][0]) for i in types.data],
        bos_id=scalar("tokenizer.ggml.bos_token_id"),
        eos_id=scalar("tokenizer.ggml.eos_token_id"),
        unk_id=scalar("tokenizer.ggml.unknown_token_id"),
        pad_id=scalar("tokenizer.ggml.padding_token_id"),
    )


def sentencepiece_from_vocab(vocab: GgufVocab):
    """Build a SentencePieceProcessor with Gemma 3's settings over the GGUF vocabulary.

    Two respellings make the GGUF vocabulary a valid SentencePiece model: raw ' ' in pieces
    becomes U+2581, and the unk piece gets type UNKNOWN (the Gemma 3 GGUF files mark <unk> as
    CONTROL, but SentencePiece requires exactly one UNKNOWN piece).
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = len(vocab.pieces)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id = vocab.unk_id
    trainer.bos_id = vocab.bos_id
    trainer.eos_id = vocab.eos_id
    trainer.pad_id = vocab.pad_id

    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True

    for index, (raw, score, kind) in enumerate(zip(vocab.pieces, vocab.scores, vocab.types)):
        piece = model.pieces.add()
        piece.piece = raw.decode("utf-8").replace(" ", SPACE_MARK)
        piece.score = score
        piece.type = UNKNOWN if index == vocab.unk_id else kind

    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model.SerializeToString())
    return processor


def core_tokenizer_from_vocab(vocab: GgufVocab):
    """Build gemma3_edge._core.Tokenizer from the raw GGUF strings, as the runtime does."""
    from gemma3_edge import _core

    return _core.Tokenizer(
        vocab.pieces,
        vocab.scores,
        vocab.types,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        unk_id=vocab.unk_id,
        pad_id=vocab.pad_id,
    )


class SpecialSplitter:
    """Reference for encode(parse_special=True), which sentencepiece lacks: the text is split at
    control pieces (leftmost, then longest) and each part between them goes to sentencepiece."""

    def __init__(self, vocab: GgufVocab):
        self._ids = {
            raw.decode("utf-8"): index
            for index, (raw, kind) in enumerate(zip(vocab.pieces, vocab.types))
            if kind in (CONTROL, UNKNOWN)
        }
        # Python's regex takes the first alternative that matches at the leftmost position, so
        # sorting longer pieces first yields the longest match there.
        alternatives = sorted(self._ids, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(piece) for piece in alternatives))

    def encode(self, processor, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        for match in self._pattern.finditer(text):
            ids += processor.encode(text[start : match.start()])
            ids.append(self._ids[match.group()])
            start = match.end()
        ids += processor.encode(text[start:])
        return ids
