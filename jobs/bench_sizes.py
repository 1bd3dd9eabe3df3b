"""The data sizes of ``esmm bench quality`` (kept apart so the CLI parser lists them
without importing the bench's Spark and torch code)."""

SIZES = {  # name: (days, impressions per day); the last day is the evaluation day
    "tiny": (3, 5_000),
    "default": (7, 60_000),
    "large": (8, 250_000),
    "xl": (15, 1_000_000),
}
