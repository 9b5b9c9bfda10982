"""``kerasprune <command>``: each command is one module of ``kerasprune.commands``.

A command module defines ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args)``. Modules are found by name, so adding a command is adding
a file. TensorFlow is imported only inside ``run``, which keeps ``--help`` instant.
"""
import argparse
import importlib
import pkgutil
import sys

import kerasprune.commands
from kerasprune import __version__
from kerasprune.errors import KerasPruneError


def command_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(kerasprune.commands.__path__)
                   if not m.name.startswith("_"))
    return {name: importlib.import_module(f"kerasprune.commands.{name}") for name in names}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's default shown unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" not in text.lower() and action.option_strings
                and not (default is None or default is False or default == argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kerasprune",
        description="Prune Keras networks (LOBSTER, one-shot baselines) and analyse their minima.")
    parser.add_argument("--version", action="version", version=f"kerasprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in command_modules().items():
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                           formatter_class=_HelpFormatter, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # for commands that start workers
    try:
        result = args._run(args)
    except KerasPruneError as exc:
        print(f"kerasprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kerasprune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
