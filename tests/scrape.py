"""Reading a worker's ``/metrics`` text in tests."""

from __future__ import annotations


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with these labels (over the labels not given, e.g. ``type``)."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
