"""Workflows that compose training, inference and evaluation: the demo, the benchmarks, the learning curve.

This layer sits above ``training``, ``inference`` and ``evaluation`` and below the CLI; nothing under it
imports from here.
"""
