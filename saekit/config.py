"""One dataclass config per stage: the same object is the CLI, the config file and the saved JSON.

`add_config_args` turns a dataclass's fields into argparse options (the field's docstring-style
comment comes from `field(metadata={"help": ...})`); `load_config` reads TOML or YAML and applies
command-line overrides; `config_to_dict` is what gets saved next to results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

C = TypeVar("C")


def doc(help_text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a one-line doc that the CLI shows."""
    kwargs: dict[str, Any] = {"metadata": {"help": help_text}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) for a field annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--field-name` option per dataclass field (default None = keep the config's value)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        scalar, is_list = _base_type(hints[f.name])
        if typing.get_origin(scalar) is dict or scalar is dict:
            scalar = json.loads  # e.g. --sae '{"l1_coef": 5.0}'
        elif scalar is bool:
            scalar = _parse_bool
        elif scalar not in (int, float, str, json.loads):
            scalar = str
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=scalar, default=None,
            nargs="+" if is_list else None, help=help_text,
        )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (.toml) or YAML (.yaml/.yml) or JSON file as a dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text) or {}
    if path.suffix == ".json":
        return json.loads(text)
    raise ValueError(f"config file {path}: unknown extension {path.suffix!r} (use .toml, .yaml or .json)")


def build_config(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Instantiate `cls` from a dict, with a clear error naming an unknown field."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**values)


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Config from an optional file, then command-line overrides (None values are ignored)."""
    values: dict[str, Any] = read_config_file(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return build_config(cls, values, source=str(path) if path else "command line")


def config_from_argv(cls: type[C], argv: list[str] | None, description: str) -> C:
    """A recipe's config from its command line `[CONFIG_FILE] [--field value ...]` (options override the file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", nargs="?", help=f"a TOML/YAML file with {cls.__name__} fields")
    add_config_args(parser, cls)
    args = parser.parse_args(argv)
    return load_config(cls, args.config, {k: v for k, v in vars(args).items() if k != "config"})


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (paths become strings)."""
    def clean(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return {k: clean(v) for k, v in dataclasses.asdict(config).items()}
