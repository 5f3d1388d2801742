"""The ``turbogen`` command.

Subcommands: ``info`` (version, build flags, backends and why any is missing), ``demo``
(``_cli_demo``), ``generate`` (``_cli_generate``) and ``bench`` (``_cli_bench``). The subcommand
modules import only the standard library at module level, so the command starts fast and
``turbogen info`` works without transformers.

Errors in what the user gave (a missing model directory, an invalid generation config) print one line,
``turbogen <command>: error: ...``, and exit with status 2, as argparse does for bad flags; warnings print
as one line each, each once.
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings

import torch

from . import bench as _cli_bench, demo as _cli_demo, generate as _cli_generate

# Exit status for errors in the user's input (argparse's own, for usage errors) and for Ctrl-C.
USAGE_ERROR = 2
INTERRUPTED = 130


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
    parser = argparse.ArgumentParser(
        prog="turbogen", description="turbogen: fast, deterministic generate() for causal language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="version, build flags, backends and why any is missing")
    info.set_defaults(handler=_cmd_info)
    for module in (_cli_demo, _cli_generate, _cli_bench):
        module.register(commands)
    return parser


def _one_line(message: object) -> str:
    """Multi-line messages (config validation lists its problems) joined into one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``) and returns the exit status.

    Usage errors exit through argparse (``SystemExit(2)``). ValueError, TypeError, OSError and ImportError
    raised by a subcommand mean bad input or a missing dependency: one line on stderr, status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"turbogen {args.command}"

    shown = set()

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # A config is validated at each stage it passes through: say each problem once.
        text = f"{prefix}: warning: {_one_line(message)}"
        if text not in shown:
            shown.add(text)
            print(text, file=sys.stderr)

    with warnings.catch_warnings():  # restores the previous warning display on exit
        warnings.showwarning = show_warning
        try:
            return args.handler(args)
        except (ValueError, TypeError, OSError, ImportError) as exc:
            print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
            return USAGE_ERROR
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return INTERRUPTED


