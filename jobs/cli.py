"""`parakeet-ray` command line: one subcommand per job module.

Each job module exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func(args) -> int` as the parser default. Heavy imports (torch, ray) stay inside `func`,
so `parakeet-ray --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that provide subcommands, in the order `--help` lists them.
JOB_MODULES = (
    "jobs.transcribe",
    "jobs.finetune",
    "jobs.query",
    "jobs.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parakeet-ray",
        description="Transcribe audio collections with Parakeet TDT on Ray; fine-tune; query results.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in JOB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def entry() -> int:
    """The installed `parakeet-ray` script: re-executes once on tcmalloc when available (jobs/allocator.py)."""
    from jobs.allocator import preload_env

    env = preload_env(os.environ)
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "jobs.cli", *sys.argv[1:]], env)
    return main()


if __name__ == "__main__":
    sys.exit(main())
