"""Shared primitives every package builds on: named random streams, file helpers, units, statistics.

Depends on nothing else in the project (numpy and the standard library only), so any layer may use it.
"""
