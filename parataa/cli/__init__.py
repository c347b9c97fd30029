"""The `parataa` command. Each subcommand lives in its own module of this package and defines
`register(subparsers)`, which adds its parser and sets `func`; modules are discovered automatically."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

DESCRIPTION = (
    "Parallel sampling of diffusion models: the sampling trajectory solved as one triangular system by fixed-point "
    "iterations with Triangular Anderson Acceleration (ParaTAA, Tang et al., ICML 2024)."
)
EPILOG = "Run 'parataa COMMAND --help' for a command's options; the study itself runs with snakemake (README.md)."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parataa", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # a command that starts itself in several processes (--gpus) passes them the same arguments
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"parataa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
