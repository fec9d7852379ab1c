"""Flows: bijections, base distributions, internal coordinates (issue 3, in progress)."""
