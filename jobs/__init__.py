"""Thin entry points: parse arguments, build the Config once, call library functions."""
