"""The Textual dashboard (opened by `localtrain` with no subcommand)."""
