"""Shared fixtures: the default model, loaded once per test session on each path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# Real text for tokenizer and perplexity checks; CI lays shared/ beside the checkout.
WIKITEXT_PATH = REPO_ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"

sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def default_model_file() -> Path:
    import gemma3_edge

    return gemma3_edge.default_model_path()


@pytest.fixture(scope="session")
def quantized_model(default_model_file):
    import gemma3_edge

    return gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2, precision="quantized")


@pytest.fixture(scope="session")
def f32_model(default_model_file):
    import gemma3_edge

    return gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2, precision="f32")


@pytest.fixture(scope="session")
def wikitext() -> str:
    if not WIKITEXT_PATH.is_file():
        pytest.skip(f"WikiText-2 not found at {WIKITEXT_PATH}")
    return WIKITEXT_PATH.read_text(encoding="utf-8")
