"""Typed recipes: frozen, nested dataclasses read from YAML, with `--set key.sub=value` overrides.

Precedence, later wins: dataclass defaults < YAML file < command-line options < `--set` overrides.

Every problem (missing or malformed file, unknown key at any depth, wrong type, value out of range)
raises `RecipeError` with a one-line message naming the file or `--set`, the dotted key and the value,
and a hint (the nearest valid key, or the field's help text).

The loader walks `dataclasses.fields` and type hints, so a new section (say `siss: SissConfig`) needs
only its frozen dataclass, help text on each field, an optional `CHECKS` table, and a field on `Recipe`.
Supported field types: str, int, float, bool, tuple[T, ...], T | None and nested dataclasses.

Deliberate leniencies, each for a common slip: an int is accepted for a float field (stored as float);
a numeric string such as "1e-4" is accepted for a float field, because YAML 1.1 reads `lr: 1e-4`
(no dot) as a string; a single string is accepted for a list-of-strings field; a section left empty
(`sample:` with every key commented out) counts as an empty mapping; in `--set`, a str field takes
the raw text, so `--set concept.name=3` means the text "3", and `key=` sets an empty string or list.
Duplicate keys in a YAML file are an error (plain YAML silently keeps the last one).

Nothing here imports torch: loading a recipe must be instant and happen before any model loads.
"""

from __future__ import annotations

from erasecli.recipes.checks import Check
from erasecli.recipes.loader import (field_help, load_recipe, recipe_from_dict, recipe_hash, recipe_keys,
                                     recipe_to_dict, recipe_to_yaml, validate, write_recipe)
from erasecli.recipes.schema import (ATTACK_NAMES, LORA_PRESETS, LR_SCHEDULES, METHOD_NAMES, REWARD_NAMES,
                                     SCHEDULERS, AcConfig, AdaptiveConfig, AntConfig, AttackConfig, ConceptConfig,
                                     CriticRlConfig, DataConfig, EsdConfig, EvalConfig, LoraConfig, PpoConfig,
                                     Recipe, SaConfig, SafreeConfig, SampleConfig, SissConfig, SldConfig, TrainConfig)

__all__ = [
    "ATTACK_NAMES", "LORA_PRESETS", "LR_SCHEDULES", "METHOD_NAMES", "REWARD_NAMES", "SCHEDULERS", "AcConfig",
    "AdaptiveConfig", "AntConfig", "AttackConfig", "Check",
    "ConceptConfig", "CriticRlConfig", "DataConfig", "EsdConfig", "EvalConfig", "LoraConfig", "PpoConfig",
    "Recipe", "SaConfig", "SafreeConfig", "SampleConfig", "SissConfig", "SldConfig", "TrainConfig", "field_help", "load_recipe", "recipe_from_dict",
    "recipe_hash", "recipe_keys", "recipe_to_dict", "recipe_to_yaml", "validate", "write_recipe",
]
