"""Benchmarks of whole collection rounds on a loopback sandbox: ``python -m bench all|round|throughput|...``.

Real Celery worker processes (the production command line) against the machine's Redis, with the Kubernetes API,
the pprof targets and profefe stood in by the sandbox doubles. See ``bench/RESULTS.md`` for figures and method.
"""
