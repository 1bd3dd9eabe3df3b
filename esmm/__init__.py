"""esmm: entire-space CVR estimation (ESMM, ESCM2) on Spark, Delta, Petastorm and PyTorch."""

__version__ = "0.1.0"
