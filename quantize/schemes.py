"""Schemes (a storage format per tensor) and presets (a scheme per tensor role)."""

from __future__ import annotations

from .formats import FORMATS, Format

# User-facing scheme names -> storage format.
SCHEMES = {
    "f32": "F32", "f16": "F16", "bf16": "BF16",
    "q8_0": "Q8_0", "int8-block32": "Q8_0",
    "q4_0": "Q4_0", "int4-block32": "Q4_0",
    "q4_1": "Q4_1", "int4-block32-zp": "Q4_1",
    "q5_0": "Q5_0", "q5_1": "Q5_1", "q4_k": "Q4_K", "q5_k": "Q5_K", "q6_k": "Q6_K",
    "int8-channel": "G3E_I8_ROW", "int4-channel": "G3E_I4_ROW", "sfp8": "G3E_SFP8",
}

ROLES = ("embedding", "attention", "feed_forward")

# Preset -> scheme per role. The tied embedding (also the LM head) stays at 8 bits or more.
PRESETS = {
    "f32": {"embedding": "f32", "attention": "f32", "feed_forward": "f32"},
    "f16": {"embedding": "f16", "attention": "f16", "feed_forward": "f16"},
    "bf16": {"embedding": "bf16", "attention": "bf16", "feed_forward": "bf16"},
    "q8_0": {"embedding": "q8_0", "attention": "q8_0", "feed_forward": "q8_0"},
    "q4_0": {"embedding": "q8_0", "attention": "q4_0", "feed_forward": "q4_0"},
    "q4_1": {"embedding": "q8_0", "attention": "q4_1", "feed_forward": "q4_1"},
    "q4_k": {"embedding": "q8_0", "attention": "q4_k", "feed_forward": "q4_k"},
    "int8-channel": {"embedding": "int8-channel", "attention": "int8-channel", "feed_forward": "int8-channel"},
    "int4-channel": {"embedding": "q8_0", "attention": "int4-channel", "feed_forward": "int4-channel"},
    "sfp8": {"embedding": "sfp8", "attention": "sfp8", "feed_forward": "sfp8"},
    # Every tensor on the grid found in it (or its source type), others in an exact float type.
    "lossless": {"embedding": "lossless", "attention": "lossless", "feed_forward": "lossless"},
    # Per-tensor formats chosen under --target-size / --target-bpw.
    "mixed": {"embedding": "q8_0", "attention": "mixed", "feed_forward": "mixed"},
}

# Formats the budgeted search chooses from, one per size level: the K-quant where the row
# length is a multiple of 256 (lower error at the same size), else the block-32 type. All run
# with the runtime's integer kernels and in llama.cpp.
MIXED_LEVELS = (("Q4_K", "Q4_0"), ("Q5_K", "Q5_0"), ("Q6_K",), ("Q8_0",))
# With project formats allowed, per-channel int4 (4.125 bits per weight) adds a level below
# 4.5 bits, so some tensors can pay for others. The runtime runs it with the integer kernels
# (repacked like Q4_0), and llama.cpp cannot load it.
MIXED_PROJECT_LEVELS = (("G3E_I4_ROW",),)

# A format whose block does not divide a row falls back to the next entry that does.
FALLBACK = {
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "G3E_I4_ROW": "Q4_0", "G3E_I8_ROW": "Q8_0",
    "G3E_SFP8": "Q8_0", "Q4_0": "F16", "Q4_1": "F16", "Q5_0": "F16", "Q5_1": "F16", "Q8_0": "F16",
}


def scheme_format(scheme: str) -> Format:
    key = scheme.lower()
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    return FORMATS[SCHEMES[key]]


def fitting_format(fmt: Format, cols: int) -> Format:
    """fmt, or its fallback when a row of cols elements is not a whole number of blocks."""
    while cols % fmt.block_size:
        fmt = FORMATS[FALLBACK[fmt.name]]
    return fmt


def role_schemes(preset: str, overrides: dict[str, str | None]) -> dict[str, str]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    schemes = dict(PRESETS[preset])
    for role, scheme in overrides.items():
        if scheme is not None:
            if scheme.lower() not in SCHEMES:
                raise ValueError(f"unknown scheme {scheme!r} for {role}; choose one of: {', '.join(SCHEMES)}")
            schemes[role] = scheme.lower()
    return schemes
