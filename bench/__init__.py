"""Benchmarks: cost scaling, speed against the floor, the paper's comparison in miniature (``make bench``)."""
