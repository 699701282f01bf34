"""Reading py-spy's collapsed stacks (``--format raw``): where a worker's CPU went, as text a report can quote."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# Leaf frames that mean "waiting", not working: the gevent hub's loop, gevent's resolver threads parked on their
# queue, the kombu/epoll poll. py-spy counts some of them as active because they sit in a native lock or syscall.
IDLE_LEAVES = (
    "Hub.run (",
    "acquire_with_timeout (",
    "_Condition.wait (",
    "poll.poll (",
    "_epoll.poll (",
    "Event.wait (",
)

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines differ, the function is what matters."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    # keep the package-relative tail: celery/worker/..., kprofefe_tasks/..., requests/...
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def summarize(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares of the busiest functions in one collapsed-stack file."""
    total = 0
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle = 0
    for raw in path.read_text(errors="replace").splitlines():
        match = _LINE.match(raw)
        if match is None:
            continue
        count = int(match["count"])
        frames = [_frame_name(f) for f in match["stack"].split(";") if f.strip()]
        if not frames:
            continue
        leaf = frames[-1]
        if leaf.startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        self_counts[leaf] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return f"{path.name}: no busy samples\n"
    lines = [f"{path.name}: {total} busy samples (shares below are of these; {idle} idle samples left out)"]
    lines.append("  self time (leaf function):")
    for name, count in self_counts.most_common(top):
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append("  inclusive time (function on the stack):")
    for name, count in inclusive.most_common(top * 2):
        lines.append(f"    {count / total:6.1%}  {name}")
    return "\n".join(lines) + "\n"
