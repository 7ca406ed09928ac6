"""
gemma3-edge C++ runtime (private; use the gemma3_edge package)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
import types
__all__: list[str] = ['Context', 'Model', 'ModelLoadError', 'PackedWeight', 'Sampler', 'StreamingDecoder', 'ThreadPool', 'Tokenizer', 'VisionModel', 'active_isa', 'available_isas', 'dequantize', 'fp16_to_fp32', 'fp32_to_fp16', 'ggml_type_name', 'measure_read_bandwidth', 'peak_rss_bytes', 'set_isa', 'set_log_level', 'vec']
class ThreadPool:
    def __init__(self, n_threads: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def size(self) -> int:
        ...
class PackedWeight:
    def __init__(self, type_id: typing.SupportsInt | typing.SupportsIndex, data: typing.Any, rows: typing.SupportsInt | typing.SupportsIndex, cols: typing.SupportsInt | typing.SupportsIndex, mode: str = 'quantized') -> None:
        ...
    def dequantize_row(self, row: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
        ...
    def matmul(self, x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], pool: ThreadPool = None) -> numpy.typing.NDArray[numpy.float32]:
        """
        y[m, rows] = x[m, cols] @ W.T; x may also be 1-D of length cols.
        """
    @property
    def bytes(self) -> int:
        ...
    @property
    def cols(self) -> int:
        ...
    @property
    def layout(self) -> str:
        ...
    @property
    def rows(self) -> int:
        ...
class Tokenizer:
    """
    SentencePiece BPE tokenizer over a GGUF vocabulary (Gemma 3 settings).
    """
    def __init__(self, pieces: collections.abc.Sequence, scores: typing.Any, types: typing.Any, *, bos_id: typing.SupportsInt | typing.SupportsIndex = 2, eos_id: typing.SupportsInt | typing.SupportsIndex = 1, unk_id: typing.SupportsInt | typing.SupportsIndex = 3, pad_id: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        """
        Build from tokenizer.ggml.tokens (str or bytes), scores and token_type (lists or numpy arrays).
        """
    def __len__(self) -> int:
        ...
    def decode(self, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> bytes:
        """
        Concatenated bytes of the pieces; control tokens give nothing.
        """
    def encode(self, text: typing.Any, add_bos: bool = False, parse_special: bool = False) -> list[int]:
        """
        Encode str or UTF-8 bytes to token ids. Invalid UTF-8 bytes become byte pieces.
        """
    def id_to_piece(self, id: typing.SupportsInt | typing.SupportsIndex) -> str:
        """
        Piece in SentencePiece's spelling (U+2581 for a space).
        """
    def piece(self, id: typing.SupportsInt | typing.SupportsIndex, render_control: bool = False) -> bytes:
        """
        Bytes that decode() emits for one token, or a control token's text with render_control.
        """
    def piece_to_id(self, piece: typing.Any) -> int:
        """
        Id of a piece (space as U+2581 or plain), or -1 when absent.
        """
    def score(self, id: typing.SupportsInt | typing.SupportsIndex) -> float:
        ...
    def token_type(self, id: typing.SupportsInt | typing.SupportsIndex) -> int:
        """
        SentencePiece piece type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        """
    @property
    def bos_id(self) -> int:
        ...
    @property
    def eos_id(self) -> int:
        ...
    @property
    def pad_id(self) -> int:
        ...
    @property
    def unk_id(self) -> int:
        ...
    @property
    def vocab_size(self) -> int:
        ...
class StreamingDecoder:
    """
    Turns token ids into text one token at a time, emitting only complete UTF-8 characters.
    """
    def __init__(self, tokenizer: Tokenizer) -> None:
        ...
    def flush(self) -> str:
        """
        Return the rest of the stream; an incomplete UTF-8 sequence becomes U+FFFD.
        """
    def push(self, id: typing.SupportsInt | typing.SupportsIndex) -> str:
        """
        Add one token; return the text completed by it (possibly empty).
        """
class ModelLoadError(ValueError):
    pass
class Model:
    def __init__(self, path: str, precision: str = 'quantized') -> None:
        ...
    def kv_bytes_per_position(self, kv_type: str) -> int:
        """
        Bytes one cached position takes in one layer (keys and values).
        """
    def layout_summary(self) -> list[str]:
        ...
    def tensors(self) -> list:
        ...
    @property
    def config(self) -> dict:
        ...
    @property
    def file_size(self) -> int:
        ...
    @property
    def precision(self) -> str:
        ...
    @property
    def tokenizer(self) -> Tokenizer:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
class Context:
    def __init__(self, model: Model, n_ctx: typing.SupportsInt | typing.SupportsIndex, n_batch: typing.SupportsInt | typing.SupportsIndex = 512, n_threads: typing.SupportsInt | typing.SupportsIndex = 1, kv_type: str = 'f32') -> None:
        ...
    def decode_each(self, tokens: typing.Any) -> float:
        """
        Evaluates the tokens one at a time with logits for each, as a decode loop does; returns the seconds taken. For benchmarks.
        """
    def eval(self, tokens: typing.Any, logits_from: typing.SupportsInt | typing.SupportsIndex = -1, embeddings: typing.Any = None, replace: typing.Any = None, spans: collections.abc.Sequence[tuple[typing.SupportsInt | typing.SupportsIndex, typing.SupportsInt | typing.SupportsIndex]] = []) -> numpy.typing.NDArray[numpy.float32]:
        """
        Appends tokens to the cache. Returns logits for tokens[logits_from:] as float32 [rows, vocab]; a negative logits_from counts from the end (-1: the last token only). embeddings (n, d_model) replace the token embeddings where replace is true; spans are [begin, end) index ranges whose tokens attend to each other in both directions.
        """
    def load_state(self, state: bytes) -> None:
        ...
    def reset(self) -> None:
        ...
    def save_state(self) -> bytes:
        ...
    def truncate(self, n: typing.SupportsInt | typing.SupportsIndex) -> bool:
        """
        Keeps cached positions 0..n-1. Returns False (and empties the cache) when a sliding layer's ring buffer no longer holds what position n needs.
        """
    @property
    def kv_bytes(self) -> int:
        ...
    @property
    def kv_type(self) -> str:
        ...
    @property
    def n_batch(self) -> int:
        ...
    @property
    def n_ctx(self) -> int:
        ...
    @property
    def n_past(self) -> int:
        ...
    @property
    def n_threads(self) -> int:
        ...
class Sampler:
    def __init__(self, temperature: typing.SupportsFloat | typing.SupportsIndex = 0.800000011920929, top_k: typing.SupportsInt | typing.SupportsIndex = 40, top_p: typing.SupportsFloat | typing.SupportsIndex = 0.949999988079071, min_p: typing.SupportsFloat | typing.SupportsIndex = 0.05000000074505806, repeat_penalty: typing.SupportsFloat | typing.SupportsIndex = 1.0, repeat_last_n: typing.SupportsInt | typing.SupportsIndex = 64, seed: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def sample(self, logits: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], history: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> int:
        ...
class VisionModel:
    def __init__(self, path: str, precision: str = 'quantized', n_threads: typing.SupportsInt | typing.SupportsIndex = 1) -> None:
        ...
    def encode(self, pixels: typing.Any, return_tower: bool = False) -> typing.Any:
        """
        Encodes one preprocessed image (3, image_size, image_size) to its soft tokens (n_tokens, projection_dim) float32. With return_tower=True, returns (tokens, tower) where tower is the encoder output after its final LayerNorm (n_patches, width).
        """
    def layout_summary(self) -> list[str]:
        ...
    def tensors(self) -> list:
        ...
    @property
    def config(self) -> dict:
        ...
    @property
    def file_size(self) -> int:
        ...
    @property
    def n_threads(self) -> int:
        ...
    @property
    def precision(self) -> str:
        ...
    @property
    def weight_bytes(self) -> int:
        ...
def active_isa() -> str:
    """
    Instruction set the kernels run on now.
    """
def available_isas() -> list[str]:
    """
    Instruction sets this CPU can run, lowest first.
    """
def dequantize(type_id: typing.SupportsInt | typing.SupportsIndex, data: typing.Any, n: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    Dequantizes n elements of GGML type `type_id` from raw bytes into a float32 array.
    """
def fp16_to_fp32(h: typing.SupportsInt | typing.SupportsIndex) -> float:
    ...
def fp32_to_fp16(f: typing.SupportsFloat | typing.SupportsIndex) -> int:
    ...
def ggml_type_name(type_id: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
    ...
def measure_read_bandwidth(n_threads: typing.SupportsInt | typing.SupportsIndex, bytes: typing.SupportsInt | typing.SupportsIndex = 1073741824, repetitions: typing.SupportsInt | typing.SupportsIndex = 5) -> float:
    """
    Best memory read rate in bytes per second over a buffer of `bytes`.
    """
def peak_rss_bytes() -> int:
    """
    Peak resident memory of this process in bytes.
    """
def set_isa(name: str) -> None:
    """
    Switches the kernels to another available ISA (for tests and benchmarks); ValueError if the CPU lacks it.
    """
def set_log_level(level: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Sets the minimum level logged to stderr: 0 debug, 1 info, 2 warning, 3 error, 4 none.
    """

vec: types.ModuleType  # float32 vector kernels of each instruction set, for tests
