"""Run configuration: presets and overrides resolved into a validated `Config`.

Precedence is defaults < preset TOML < command-line overrides. The dataclasses themselves
are in `localtrain.schema` and are named from here too. Validation (`localtrain.validate`)
collects every problem and raises one `ConfigError` listing them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from localtrain.errors import ConfigError
from localtrain.schema import (  # noqa: F401 - the schema is named from here by every caller
    BACKENDS, DEVICES, DTYPES, SECTIONS, SWITCHES, TOKENIZER_TYPES, Config, DataConfig, ModelConfig, RunConfig,
    TrainConfig, all_keys, did_you_mean, field_docs,
)
from localtrain.validate import check

def presets_dir() -> Path:
    return Path(str(resources.files("localtrain.configs")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def _unknown_key_problem(key: str, where: str) -> str:
    keys = all_keys()
    section, _, name = key.partition(".")
    names = sorted({k.split(".")[1] for k in keys})
    # The right name in the wrong section first, then the closest spelling.
    found = [k for k in keys if name and k.split(".")[1] == name]
    found = found or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not found and not name:
        # A bare field name such as `lr`: find the section that owns it.
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        found = [k for k in keys if close and k.endswith("." + close[0])]
    if not found and section in SECTIONS:
        close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(SECTIONS[section])], n=1, cutoff=0.5)
        found = [f"{section}.{close[0]}"] if close else []
    if not found and section not in SECTIONS:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=0.5)
        found = [f"{close[0]}.{name}"] if close and f"{close[0]}.{name}" in keys else []
    hint = (
        f" Did you mean `{found[0]}`?"
        if found
        else " Keys are written section.name, like `train.lr`; `localtrain config --keys` lists them all."
    )
    return f"`{key}` ({where}) is not a configuration key.{hint}"


def _coerce(key: str, value: Any, typ: Any, from_text: bool) -> tuple[Any, str | None]:
    """Convert `value` to `typ`; return (value, problem)."""
    if get_origin(typ) is list:
        if from_text:
            text = value.strip()
            if text.startswith("["):
                try:
                    value = tomllib.loads(f"v = {text}")["v"]
                except tomllib.TOMLDecodeError as exc:
                    return None, f"`{key}` = {value!r}: not a TOML list ({exc})."
            else:
                value = [text] if text else []
        if get_args(typ) == (int,):
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = [_coerce(key, v, int, True)[0] for v in value]  # --set data.phases=100
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return None, f"`{key}` = {value!r}: must be a list of whole numbers, like [1000, 10000]."
            return list(value), None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"`{key}` = {value!r}: must be a list of strings, like [\"a\", \"b\"]."
        return list(value), None
    if typ is bool:
        if isinstance(value, bool):
            return value, None
        if from_text and value.strip().lower() in ("true", "1", "yes", "on"):
            return True, None
        if from_text and value.strip().lower() in ("false", "0", "no", "off"):
            return False, None
        return None, f"`{key}` = {value!r}: must be true or false."
    if typ in (int, float):
        problem = f"`{key}` = {value!r}: must be {'a whole number' if typ is int else 'a number'}."
        if isinstance(value, bool):
            return None, problem
        if isinstance(value, int) or (typ is float and isinstance(value, float)):
            return typ(value), None
        try:
            number = float(value.replace("_", "")) if from_text else float(value)
        except (TypeError, ValueError, AttributeError):
            return None, problem
        if typ is int and not number.is_integer():
            return None, problem
        return typ(number), None
    if typ is str:
        if isinstance(value, str):
            return value, None
        return None, f"`{key}` = {value!r}: must be a string."
    raise AssertionError(f"unsupported field type {typ!r}")


def _apply(
    values: dict[str, dict[str, Any]],
    key: str,
    raw: Any,
    where: str,
    from_text: bool,
    problems: list[str],
) -> None:
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    hints = get_type_hints(cls) if cls else {}
    if cls is None or name not in hints or "." in name:
        problems.append(_unknown_key_problem(key, where))
        return
    value, problem = _coerce(key, raw, hints[name], from_text)
    if problem:
        problems.append(f"{problem} (from {where})")
    else:
        values[section][name] = value


def _flatten_toml(doc: dict[str, Any], where: str, problems: list[str]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for section, table in doc.items():
        if isinstance(table, dict):
            items += [(f"{section}.{name}", value) for name, value in table.items()]
        else:
            problems.append(_unknown_key_problem(section, where))
    return items


def load_preset(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Read a preset by name (configs/NAME.toml) or a TOML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError([f"`--preset {name_or_path}`: no such file. Give a preset name ({', '.join(preset_names())}) or the path of a TOML file."])
    else:
        path = presets_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            names = preset_names()
            raise ConfigError([
                f"`--preset {name_or_path}` is not a preset.{did_you_mean(name_or_path, names)}"
                f" Presets are: {', '.join(names)}."
            ])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), str(path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"`{path}` is not valid TOML: {exc}. Fix the file or pick another preset."]) from exc


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"`--set {text}`: an override is written key=value, like `--set train.lr=3e-4`."])
    return key.strip(), value


def resolve(
    preset: str = "python-stdlib",
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a validated Config from a preset (or a base TOML dict) and `key=value` overrides."""
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    doc, where = load_preset(preset) if base is None else (base, "the run's config.toml")
    for key, raw in _flatten_toml(doc, where, problems):
        _apply(values, key, raw, where, from_text=False, problems=problems)
    overrides = list(overrides or [])
    for text in overrides:
        try:
            key, raw = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        _apply(values, key, raw, f"override `{text}`", from_text=True, problems=problems)
    if base is None:
        values["run"].setdefault("preset", Path(preset).stem if preset.endswith(".toml") else preset)
    recorded = list(values["run"].get("overrides", []))
    values["run"]["overrides"] = recorded + [o for o in overrides if not o.startswith("run.overrides")]
    config = Config(**{s: SECTIONS[s](**values[s]) for s in SECTIONS})
    # Range checks run even when some values did not parse, so that every problem is
    # reported at once; keys that did not parse are not checked again.
    failed = {p.split("`")[1] for p in problems if p.startswith("`")}
    problems += [p for p in check(config) if p.split("`")[1] not in failed]
    if problems:
        raise ConfigError(problems)
    return config


def to_toml(config: Config) -> str:
    import tomli_w

    return tomli_w.dumps(config.to_dict(), multiline_strings=False)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"`{path}` could not be read as TOML: {exc}."]) from exc


def diff(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two configs, with (old, new)."""
    a, b = old.to_dict(), new.to_dict()
    return [
        (f"{s}.{k}", a[s][k], b[s][k])
        for s in SECTIONS
        for k in a[s]
        if a[s][k] != b[s][k]
    ]
