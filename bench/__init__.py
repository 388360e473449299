"""Throughput benchmark of the runner against its baselines, on the DashScope emulator.

``python -m bench`` (``make bench``) runs everything and writes BENCHMARKS.md; the parts
are ``bench.throughput`` (this runner, known and learned quotas), ``bench.baselines``
(sequential loop, SDK thread pool, naive gather), ``bench.overhead`` (zero-latency
pipeline) and ``bench.faceswap`` (face-swap quality, owned separately).
"""
