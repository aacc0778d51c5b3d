"""The verbs that compose the libraries: cv, compare, ensemble, export, predict, classify and datasets (`tools.py`).

Each verb is independent of the others (import-linter checks it); what two
verbs share lives in a library package below.
"""
