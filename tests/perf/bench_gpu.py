"""One command for the GPU benchmark: ours vs NeMo 3.0's `transcribe` (greedy_batch, its CUDA-graph TDT
decoder) on the same weights, batch sizes 1, 16, 64, 128, fp32 and bf16. Run in the NeMo venv on a GPU node:

    /opt/nemo/bin/python tests/perf/bench_gpu.py --shape parakeet-tdt-0.6b-v3
    /opt/nemo/bin/python tests/perf/bench_gpu.py --nemo parakeet-tdt-0.6b-v3.nemo --seconds 10 --hf

It is tests/perf/compare_references.py with GPU defaults (--device cuda, --batch-sizes 1,16,64,128,
--precisions fp32,bf16, --references nemo, --repeats 3, --json bench_gpu.json); any of its flags
overrides them, and --hf adds transformers' generate() as a third column. It prints a header (checkpoint,
parameters, GPU name, torch and CUDA versions), one line per (batch size, precision) with end-to-end
RTFx of ours and NeMo, their ratio, and the decoding-only seconds of both given ours' encoder output, then
the CUDA-graph mode NeMo's decoder used, and writes the rows to the JSON file. Without a CUDA device it
exits with status 2, unless --device cpu asks for a (slow, CPU) smoke run.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.perf import compare_references  # noqa: E402

GPU_DEFAULTS = dict(device="cuda", batch_sizes="1,16,64,128", precisions="fp32,bf16", references="nemo", repeats=3,
                    json="bench_gpu.json")


def main(argv: list[str] | None = None) -> None:
    ap = compare_references.parser(description=__doc__.split("\n\n")[0])
    ap.set_defaults(**GPU_DEFAULTS)
    ap.add_argument("--hf", action="store_true", help="also time transformers' generate() (--references nemo,hf)")
    args = ap.parse_args(argv)
    if args.hf:
        args.references = "nemo,hf"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda}): run it on a GPU node, "
                 "or pass --device cpu for a smoke run")
    compare_references.check_args(ap, args)
    compare_references.run(args)


if __name__ == "__main__":
    main()
