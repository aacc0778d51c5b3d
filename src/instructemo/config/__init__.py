"""The YAML config: one flat file of keys, checked on load (types, ranges, choices, did-you-mean, duplicates).

`groups.py` declares every key once, in its group (model, data, fine-tuning,
inference, tune), with its default, help and metadata; `schema.py` makes them
one `Config`, reads YAML into it and derives the key lists; `checks.py` holds
the checks between keys. Verbs receive a `Config`.
"""

from instructemo.config.schema import FIELDS, Config, describe_keys, keys_by_group, load_config, make_config

__all__ = ["FIELDS", "Config", "describe_keys", "keys_by_group", "load_config", "make_config"]
