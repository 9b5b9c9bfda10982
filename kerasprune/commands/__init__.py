"""One module per ``kerasprune`` subcommand (see ``kerasprune.cli``)."""
