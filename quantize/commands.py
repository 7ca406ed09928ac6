"""The gemma3-edge convert and quality subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .schemes import PRESETS, SCHEMES


def _size(text: str) -> int:
    """Parse a size such as 241400000, 241.4MB, 230MiB or 1.2G into bytes."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
             "g": 10**9, "gb": 10**9, "gib": 2**30}
    value = text.strip().lower()
    number = value.rstrip("kmgib")
    unit = value[len(number):]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; write bytes or a number with kB, MB, MiB, GB") from None


def add_subcommands(sub) -> None:
    conv = sub.add_parser("convert", help="convert a Hugging Face checkpoint or GGUF file into a quantized GGUF",
                          description="Convert a Gemma 3 checkpoint (Hugging Face directory or GGUF file) into "
                                      "the runtime's GGUF, quantized per preset or under a size budget.")
    conv.add_argument("input", type=Path, help="Hugging Face checkpoint directory or GGUF file")
    conv.add_argument("output", type=Path, help="GGUF file to write (must not be the input)")
    conv.add_argument("--preset", default="q4_0", choices=sorted(PRESETS),
                      help="scheme per tensor role (default: q4_0: int4 block-32 linear layers, Q8_0 embedding)")
    scheme_names = ", ".join(SCHEMES)
    for role in ("embedding", "attention", "feed-forward"):
        conv.add_argument(f"--{role}", default=None, metavar="SCHEME",
                          help=f"override the preset's scheme for {role} tensors ({scheme_names})")
    conv.add_argument("--vision", default=None, metavar="SCHEME",
                      help="scheme for the vision tower of a multimodal checkpoint, written to OUTPUT-mmproj.gguf "
                           "(default: q8_0; the f32, f16 and bf16 presets keep their format)")
    conv.add_argument("--no-grid", action="store_true", help="do not re-encode weights already on the format's grid")
    conv.add_argument("--no-search", action="store_true",
                      help="take each block's absolute maximum as its range instead of searching the clipping range")
    conv.add_argument("--no-calibration", action="store_true",
                      help="skip the calibration run (no activation-weighted scales, no GPTQ rounding)")
    conv.add_argument("--calibration", type=Path, default=None, metavar="TEXT",
                      help="UTF-8 calibration text (default: the sample shipped with the package)")
    conv.add_argument("--calibration-chunks", type=int, default=16, help="chunks of calibration text (default: 16)")
    conv.add_argument("--calibration-ctx", type=int, default=512, help="tokens per calibration chunk (default: 512)")
    conv.add_argument("--target-size", type=_size, default=None,
                      help="with --preset mixed: maximum file size, e.g. 241.4MB")
    conv.add_argument("--target-bpw", type=float, default=None,
                      help="with --preset mixed: bits per weight over the attention and feed-forward tensors")
    conv.add_argument("--mixed-project-formats", action="store_true",
                      help="with --preset mixed: also use per-channel int4 (4.125 bits per weight; the runtime "
                           "runs it with its integer kernels, llama.cpp cannot load it)")
    conv.add_argument("--report", type=Path, default=None, help="write the per-tensor report as JSON to this file")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bars, summary only")
    conv.set_defaults(func=_cmd_convert)

    qual = sub.add_parser("quality", help="KL divergence, top-1 agreement and perplexity of a quantized file vs its source",
                          description="Compare QUANTIZED with SOURCE on a text file over the chunks "
                                      "llama-perplexity --kl-divergence uses (BOS-led, second half scored).")
    qual.add_argument("source", type=Path, help="source GGUF, run on the runtime's float32 path")
    qual.add_argument("quantized", type=Path, help="quantized GGUF, run on its quantized path")
    qual.add_argument("-f", "--file", required=True, type=Path, help="UTF-8 text file")
    qual.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    qual.add_argument("--chunks", type=int, default=None, help="score only the first N chunks")
    qual.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    qual.add_argument("--json", action="store_true", help="machine-readable output")
    qual.set_defaults(func=_cmd_quality)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import ConvertOptions, convert, report_json

    options = ConvertOptions(
        preset=args.preset, embedding=args.embedding, attention=args.attention, feed_forward=args.feed_forward,
        grid=not args.no_grid, search=not args.no_search, calibration=not args.no_calibration,
        calibration_file=args.calibration, calibration_chunks=args.calibration_chunks,
        calibration_ctx=args.calibration_ctx, target_size=args.target_size, target_bpw=args.target_bpw,
        mixed_project_formats=args.mixed_project_formats, vision=args.vision,
        progress=not args.quiet)
    report = convert(args.input, args.output, options)
    print(report.summary(per_tensor=not args.quiet))
    if args.report:
        args.report.write_text(report_json(report), encoding="utf-8")
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from .quality import format_quality, quality

    text = args.file.read_text(encoding="utf-8")
    result = quality(args.source, args.quantized, text, n_ctx=args.ctx, n_chunks=args.chunks,
                     n_threads=args.threads, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(result, indent=1) if args.json else format_quality(result))
    return 0
