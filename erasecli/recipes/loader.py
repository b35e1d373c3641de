"""The generic typed-YAML loader behind recipes: frozen, nested dataclasses read from YAML files, command-line
values and `--set key.sub=value` overrides, checked field by field (see the package docstring for the rules).

It walks `dataclasses.fields` and type hints from the root section (`Recipe`), so it knows nothing of what
the sections mean."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from erasecli.errors import RecipeError
from erasecli.outputs import atomic_write
from erasecli.recipes.checks import Check, Checks
from erasecli.recipes.schema import Recipe

# ---------------------------------------------------------------------------------------------------
# Walking the dataclass tree.


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def recipe_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every settable dotted key, in declaration order, e.g. ['base', 'method', 'concept.name', ...]."""
    keys: list[str] = []
    for name in _fields(cls):
        tp = _hints(cls)[name]
        if _is_section(tp):
            keys += recipe_keys(tp, _join(prefix, name))
        else:
            keys.append(_join(prefix, name))
    return keys


def _in(source: str | None) -> str:
    return f" in {source}" if source else ""


def _show(value: Any) -> str:
    """A value as the user wrote it, on one short line."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)  # repr escapes newlines, so this stays on one line
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(dotted: str, section: type, prefix: str, source: str | None) -> RecipeError:
    leaf = dotted.rsplit(".", 1)[-1]
    names = list(_fields(section))
    candidates = [_join(prefix, n) for n in difflib.get_close_matches(leaf, names, n=2)]
    if not candidates:  # right name, wrong section? e.g. top-level 'steps' -> 'sample.steps'
        candidates = [k for k in recipe_keys() if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], n=1)][:3]
    if candidates:
        hint = "did you mean " + " or ".join(f"'{c}'" for c in candidates) + "?"
    else:
        hint = f"valid keys{' in ' + repr(prefix) if prefix else ''}: " + ", ".join(names)
    return RecipeError(f"unknown recipe key '{dotted}'{_in(source)}", hint=hint)


def _resolve(dotted: str, source: str | None = None) -> tuple[dataclasses.Field, Any]:
    """The field and type hint behind a dotted key; unknown keys raise naming the nearest valid one."""
    cls: Any = Recipe
    prefix = ""
    for part in dotted.split("."):
        if not _is_section(cls):
            raise RecipeError(
                f"recipe key '{prefix}' is a value, not a section, so '{dotted}' does not exist{_in(source)}",
                hint=f"set '{prefix}' itself",
            )
        if part not in _fields(cls):
            raise _unknown_key(_join(prefix, part), cls, prefix, source)
        found, cls = _fields(cls)[part], _hints(cls)[part]
        prefix = _join(prefix, part)
    return found, cls


def field_help(dotted: str) -> str:
    """Help text for a dotted key such as 'sample.steps', ending with its default for value fields."""
    found, tp = _resolve(dotted)
    text = found.metadata.get("help", "")
    if _is_section(tp):
        return text
    return f"{text} Default: {json.dumps(_plain(found.default), ensure_ascii=False)}."


# ---------------------------------------------------------------------------------------------------
# Types: raw YAML/CLI values -> typed values, one layer at a time so errors can name their source.

_NOUNS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe(tp: Any) -> str:
    if tp in _NOUNS:
        return _NOUNS[tp]
    if _is_section(tp):
        return "a mapping of keys to values"
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    return str(tp)


def _type_error(value: Any, tp: Any, key: str, source: str | None) -> RecipeError:
    if value is None:
        hint = "give a value, or delete the key to use the default"
    elif tp is str and isinstance(value, (int, float)):
        hint = f'quote it to make it text: "{value}"'
    elif tp is int and isinstance(value, float):
        hint = "use a whole number"
    else:
        hint = field_help(key.split("[", 1)[0])
    return RecipeError(f"recipe key '{key}'{_in(source)} expects {_describe(tp)}, got {_show(value)}", hint=hint)


def _coerce_section(value: Any, cls: type, prefix: str, source: str | None) -> dict[str, Any]:
    """Check keys and types of one (partial) section; returns a nested dict of typed values."""
    if value is None and prefix:  # `sample:` with every key commented out
        return {}
    if not isinstance(value, Mapping):
        what = f"recipe section '{prefix}'" if prefix else "the recipe"
        raise RecipeError(
            f"{what}{_in(source)} must be a mapping of keys to values, got {_show(value)}",
            hint="write one 'key: value' per line" + (f" under '{prefix}:'" if prefix else ""),
        )
    out: dict[str, Any] = {}
    for key, raw in value.items():
        name = str(key)
        if name not in _fields(cls):
            raise _unknown_key(_join(prefix, name), cls, prefix, source)
        out[name] = _coerce(raw, _hints(cls)[name], _join(prefix, name), source)
    return out


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_section(tp):
        return _coerce_section(value, tp, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):  # bool is an int in Python, not here
            return value
        raise _type_error(value, tp, key, source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                number = float(value.strip())
            except ValueError:
                raise _type_error(value, tp, key, source) from None
        else:
            raise _type_error(value, tp, key, source)
        if not math.isfinite(number):
            raise RecipeError(f"recipe key '{key}'{_in(source)} must be a finite number, got {_show(value)}",
                              hint=field_help(key))
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, tp, key, source)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str) and args[0] is str:  # a single prompt or module name
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value))
        raise _type_error(value, tp, key, source)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0], key, source)
    raise TypeError(f"recipe field '{key}' has type {tp!r}, which the recipe loader does not support")


# ---------------------------------------------------------------------------------------------------
# Layers: YAML file, command-line options, --set overrides.


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides are intended
                continue
            key = self.construct_object(key_node, deep=deep)
            with contextlib.suppress(TypeError):  # unhashable keys: let SafeLoader report them
                if key in seen:
                    raise _DuplicateKey(
                        None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or "invalid YAML"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}",
                          hint="check the path, or see recipes/ for examples") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe path is a folder, not a file: {path}", hint="give a .yaml file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file is not UTF-8 text: {path}", hint="save it as UTF-8 YAML") from None
    except OSError as err:
        raise RecipeError(f"cannot read recipe file {path}: {err.strerror or err}",
                          hint="check its permissions") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise RecipeError(f"malformed YAML in recipe file {path}, {_yaml_problem(err)}",
                          hint="keep one of the two; YAML would silently use the last") from None
    except yaml.YAMLError as err:
        raise RecipeError(
            f"malformed YAML in recipe file {path}, {_yaml_problem(err)}",
            hint="check indentation, the ':' after each key, and unclosed quotes or brackets on that line",
        ) from None
    return {} if data is None else data


def _parse_set(text: str) -> dict[str, Any]:
    """`--set a.b=value` -> {'a': {'b': value}}; the value is YAML, except str fields take the raw text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise RecipeError(f"cannot read --set {text!r}: expected the form --set key.sub=value",
                          hint="e.g. --set sample.steps=50 or --set lora.target_modules=[to_q,to_v]")
    key = ".".join(part.strip() for part in key.split("."))
    source = f"--set {text}"
    _, tp = _resolve(key, source)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise RecipeError(f"cannot parse the value in {source}: {_yaml_problem(err)}",
                          hint="quote the value, e.g. --set 'concept.name=\"a: b\"'") from None
    wants_text = tp is str or tp == tuple[str, ...]
    if wants_text and not isinstance(value, (str, list, dict)):  # `name=3`, `name=yes`, `name=`
        value = raw.strip()
        if tp != str and value == "":
            value = []  # `--set concept.retain_prompts=` clears the list
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """CLI options left unset arrive as None; they must not override the file."""
    return {
        k: _drop_none(v) if isinstance(v, Mapping) else v
        for k, v in values.items()
        if v is not None
    }


def _merge(into: dict, layer: Mapping, origins: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = _join(prefix, key)
        if isinstance(value, dict):  # a section; typed leaves are never dicts
            _merge(into.setdefault(key, {}), value, origins, source, dotted)
        else:
            into[key] = value
            origins[dotted] = source


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = _hints(cls)
    return cls(**{k: _build(hints[k], v) if _is_section(hints[k]) else v for k, v in values.items()})


# ---------------------------------------------------------------------------------------------------
# Validation of values (types are checked while coercing).


def _failures(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any, Check]]:
    checks: Checks = getattr(type(obj), "CHECKS", {})
    for name in _fields(type(obj)):
        value, key = getattr(obj, name), _join(prefix, name)
        if dataclasses.is_dataclass(value):
            yield from _failures(value, key)
            continue
        for check in checks.get(name, ()):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if check.each else [(key, value)]
            for item_key, item in items:
                if not check.ok(item):
                    yield item_key, item, check


def _validate(r: Recipe, origins: Mapping[str, str]) -> None:
    _coerce_section(recipe_to_dict(r), Recipe, "", None)  # types, for recipes built in Python
    for key, value, check in _failures(r):
        source = origins.get(key.split("[", 1)[0])
        raise RecipeError(
            f"{key} must be {check.need}, got {_show(value)}" + (f" (from {source})" if source else ""),
            hint=field_help(key.split("[", 1)[0]),
        )


def validate(r: Recipe) -> None:
    """Raise RecipeError for the first wrong type or out-of-range value, naming key and value."""
    _validate(r, {})


# ---------------------------------------------------------------------------------------------------
# Public entry points.


def recipe_from_dict(d: Mapping) -> Recipe:
    """A validated Recipe from a nested mapping (missing keys take their defaults)."""
    r = _build(Recipe, _coerce_section(d, Recipe, "", None))
    _validate(r, {})
    return r


PRESET_KEYS_KEPT_OUT = ("base", "method", "concept", "defaults")  # a preset sets how, never what or where


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = (), *, preset: str | Path | None = None,
                **cli_values: Any) -> Recipe:
    """Defaults < preset file (its `base`, `method`, `concept` and `defaults` left out) < YAML file at `path` <
    `cli_values` (top-level keys or nested dicts; None ignored) < `overrides` ("a.b=value" strings from --set,
    applied in order)."""
    if isinstance(overrides, str):
        overrides = (overrides,)
    layers: list[tuple[Any, str]] = []
    if preset is not None:
        data = _read_yaml(Path(preset))
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k not in PRESET_KEYS_KEPT_OUT}
        layers.append((data, f"preset {Path(preset).name}"))
    if path is not None:
        layers.append((_read_yaml(Path(path)), f"recipe file {path}"))
    cli = _drop_none(cli_values)
    if cli:
        layers.append((cli, "command-line options"))
    layers += [(_parse_set(text), f"--set {text}") for text in overrides]
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for data, source in layers:
        _merge(merged, _coerce_section(data, Recipe, "", source), origins, source)
    r = _build(Recipe, merged)
    _validate(r, origins)
    return r


def _plain(value: Any, tp: Any = None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        return {name: _plain(getattr(value, name), hints[name]) for name in _fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # so Recipe(guidance=5) and Recipe(guidance=5.0), equal, hash the same
    return value


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    """Nested dict of plain YAML/JSON types (tuples become lists), in declaration order."""
    return _plain(r)


def recipe_to_yaml(r: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(r), sort_keys=False, allow_unicode=True, default_flow_style=False)


def recipe_hash(r: Recipe) -> str:
    """First 12 hex digits of sha256 over the canonical JSON (sorted keys, no spaces, UTF-8).

    Every field counts, defaults included: adding a section with defaults changes every hash."""
    canonical = json.dumps(recipe_to_dict(r), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def write_recipe(r: Recipe, path: Path) -> None:
    """Write `r` as YAML atomically: a temp file in the same folder, then os.replace over `path`."""
    validate(r)
    path = Path(path)
    text = recipe_to_yaml(r)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync=True, parents=False)
    except OSError as err:
        raise RecipeError(f"cannot write recipe to {path}: {err.strerror or err}",
                          hint="check that the folder exists and is writable") from None
