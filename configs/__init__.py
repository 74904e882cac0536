"""Preset recipes as TOML files: `localtrain run --preset NAME` reads NAME.toml from here."""
