"""The YAML config: one flat file of keys, checked on load (types, ranges, choices, did-you-mean, duplicates).

`schema.py` declares every key once with its default, help and metadata;
`checks.py` holds the checks between keys. Verbs receive a `Config`.
"""
