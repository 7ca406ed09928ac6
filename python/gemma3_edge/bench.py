"""Prefill and decode throughput measured as llama.cpp's llama-bench does (pp512, tg128), with
the machine's read bandwidth for the decode limit."""

from __future__ import annotations

import os
import platform
import random
import statistics
import time

from gemma3_edge import _core
from gemma3_edge.model import Model


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(model: Model, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 3, seed: int = 0,
          bandwidth: bool = True) -> dict:
    """Measure prefill and decode tokens per second on model's context.

    Prefill (pp): n_prompt random tokens in one call from an empty cache, logits for the last
    token only. Decode (tg): n_gen random tokens one at a time from an empty cache, logits for
    each. Random tokens as llama-bench uses them; each test runs once to warm up, then
    `repetitions` times, and the mean and standard deviation of the rates are reported.
    The process's peak resident memory is read after the tests. With bandwidth=False the
    read-bandwidth fields are left for add_bandwidth(), so that several reports can take
    their memory peaks before any bandwidth test allocates its buffer.
    """
    if n_prompt < 1 or n_gen < 1 or repetitions < 1:
        raise ValueError("n_prompt, n_gen and repetitions must be >= 1")
    if max(n_prompt, n_gen) > model.n_ctx:
        raise ValueError(f"n_prompt and n_gen must fit in n_ctx {model.n_ctx}")
    rng = random.Random(seed)
    vocab = model.n_vocab
    context = model._context
    results: dict = {}

    with model._lock:
        rates = []
        for run in range(repetitions + 1):
            tokens = [rng.randrange(vocab) for _ in range(n_prompt)]
            context.reset()
            start = time.perf_counter()
            context.eval(tokens, -1)
            seconds = time.perf_counter() - start
            if run > 0:
                rates.append(n_prompt / seconds)
        results[f"pp{n_prompt}"] = _summary(rates)

        rates = []
        for run in range(repetitions + 1):
            tokens = [rng.randrange(vocab) for _ in range(n_gen)]
            context.reset()
            seconds = context.decode_each(tokens)
            if run > 0:
                rates.append(n_gen / seconds)
        results[f"tg{n_gen}"] = _summary(rates)
        context.reset()

    report = {
        "model": str(model.path),
        "precision": model.precision,
        "isa": _core.active_isa(),
        "n_threads": model.n_threads,
        "cpu": _cpu_name(),
        "n_cpus": os.cpu_count(),
        "results": results,
        "weight_bytes_per_token": model._model.weight_bytes,
        "peak_rss_bytes": _core.peak_rss_bytes(),
        "kv_cache_bytes": model.kv_bytes,
    }
    if bandwidth:
        add_bandwidth(report)
    return report


def add_bandwidth(report: dict) -> None:
    """Add the read bandwidth at the report's thread count and the decode limit it implies.

    The limit is the bandwidth divided by the weight bytes read per token; the report also
    gets the fraction of that limit that decode reached.
    """
    bandwidth = _core.measure_read_bandwidth(report["n_threads"], 1 << 30, 5)
    limit = bandwidth / report["weight_bytes_per_token"]
    decode = next(r for name, r in report["results"].items() if name.startswith("tg"))
    report["read_bandwidth_gb_s"] = bandwidth / 1e9
    report["decode_limit_tok_s"] = limit
    report["decode_fraction_of_limit"] = decode["mean"] / limit


def _summary(rates: list[float]) -> dict:
    return {
        "mean": statistics.fmean(rates),
        "stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "runs": rates,
    }


def format_report(report: dict) -> str:
    lines = [
        f"model: {report['model']} ({report['precision']}, {report['isa']}, {report['n_threads']} threads)",
        f"cpu: {report['cpu']} ({report['n_cpus']} logical CPUs)",
        "| test | tok/s |",
        "|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['mean']:.1f} ± {r['stdev']:.1f} |")
    lines.append(
        f"read bandwidth {report['read_bandwidth_gb_s']:.1f} GB/s; weights read per token "
        f"{report['weight_bytes_per_token'] / 1e6:.1f} MB; decode limit {report['decode_limit_tok_s']:.1f} tok/s; "
        f"decode reaches {100 * report['decode_fraction_of_limit']:.0f}% of it"
    )
    lines.append(f"peak resident memory {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
