"""Spark transformations: DataFrame -> DataFrame functions, with Delta I/O at the edges."""
