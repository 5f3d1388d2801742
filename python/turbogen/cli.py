"""The ``turbogen`` command.

Subcommands: ``info`` (version, build flags, backends and why any is missing); ``demo``,
``generate`` and ``bench`` are added by the modules that implement them.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def _info_lines() -> list[str]:
    import turbogen
    from turbogen import _ext
    from turbogen.ops import available_backends

    lines = [f"turbogen {turbogen.__version__}",
             f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}"]
    error = _ext.extension_error()
    if error is None:
        ext = _ext.extension()
        archs = ext.cuda_archs or "-"
        lines.append(f"extension turbogen._C: built, CUDA kernels {'yes' if ext.cuda_compiled else 'no'} "
                     f"(archs {archs}), CPU threads {ext.num_threads()}")
    else:
        lines.append(f"extension turbogen._C: missing ({error})")
    lines.append("backends:")
    for name, status in available_backends().items():
        mark = "yes" if status.available else "no "
        lines.append(f"  {name:<7}{mark}  {status.reason}".rstrip())
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(_info_lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbogen", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="version, build flags, backends and why any is missing")
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as exc:
        print(f"turbogen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
