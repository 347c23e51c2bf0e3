"""A benchmark of this registry against the reference registry (CNCF Distribution 2.8).

``make bench`` (``python -m bench.run``); bench/README.md explains how to read its table.
"""
