"""hpcbench: correct, reproducible multi-process multi-GPU inference benchmarks on HPC nodes."""

__version__ = "0.1.0"
