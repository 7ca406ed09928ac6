"""Print the KV cache memory table of docs/kv_cache.md.

The sizes come from gemma3_edge.model.kv_cache_bytes_for_config, the formula that
tests/test_kv_cache.py checks against the runtime's own allocation. Layer counts, KV heads,
head sizes and windows are those of the Hugging Face configs of the released Gemma 3 models.
"""

from __future__ import annotations

from gemma3_edge.model import kv_cache_bytes_for_config

N_CTX = 32768
# (layers, KV heads, head size, sliding window)
MODELS = {
    "270M": (18, 1, 256, 512),
    "1B": (26, 1, 256, 512),
    "4B": (34, 4, 256, 1024),
    "12B": (48, 8, 256, 1024),
    "27B": (62, 16, 128, 1024),
}


def config(n_layers: int, n_kv_heads: int, head_dim: int, window: int) -> dict:
    # Every 6th layer is global, the other five slide (Gemma 3's 5:1 pattern).
    layer_types = ["global" if (i + 1) % 6 == 0 else "sliding" for i in range(n_layers)]
    return {"n_kv_heads": n_kv_heads, "head_dim": head_dim, "sliding_window": window, "layer_types": layer_types}


def main() -> None:
    print("| model | every layer full, bf16 | ours, bf16 | ours, f16 | ours, int8 | ratio bf16 | ratio int8 |")
    print("|---|---|---|---|---|---|---|")
    for name, sizes in MODELS.items():
        c = config(*sizes)
        full = kv_cache_bytes_for_config(c, N_CTX, "bf16", all_layers_full=True)
        ours = {t: kv_cache_bytes_for_config(c, N_CTX, t) for t in ("bf16", "f16", "int8")}
        print(
            f"| {name} | {full / 1e9:.2f} GB | {ours['bf16'] / 1e9:.3f} GB | {ours['f16'] / 1e9:.3f} GB | "
            f"{ours['int8'] / 1e9:.3f} GB | {full / ours['bf16']:.1f}x | {full / ours['int8']:.1f}x |"
        )


if __name__ == "__main__":
    main()
