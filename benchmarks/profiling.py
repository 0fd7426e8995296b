"""Sampling profiles of a server process under load, with py-spy.

py-spy reads the target's memory from outside, so it needs ptrace rights on the target
(root, or a process of the same user with a permissive kernel.yama.ptrace_scope). With
`--nonblocking` it does not pause the target, at the cost of some unreadable samples,
which it counts as errors. Samples of idle threads are left out, so the shares below
are shares of the time the process was running Python code or native code under it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# "function (path/to/file.py:123)", one frame of py-spy's raw (collapsed stack) output.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
SAMPLE_RATE = 250


@dataclass
class Profile:
    """Aggregated samples: per-frame self and inclusive counts, frames written `function (file)`."""

    samples: int
    self_counts: Counter[str]
    inclusive_counts: Counter[str]
    stacks: list[tuple[frozenset[str], int]]

    def top(self, count: int, *, inclusive: bool) -> list[tuple[str, int, float]]:
        counts = self.inclusive_counts if inclusive else self.self_counts
        return [(frame, hits, hits / self.samples) for frame, hits in counts.most_common(count)]

    def share_of(self, predicate: Callable[[str], bool]) -> float:
        """Return the share of samples whose stack has at least one frame matching `predicate`."""
        matching = sum(hits for frames, hits in self.stacks if any(predicate(frame) for frame in frames))
        return matching / self.samples if self.samples else 0.0


def py_spy_path() -> str | None:
    found = shutil.which("py-spy")
    if found is not None:
        return found
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else None


def start_recording(pid: int, duration: float, output: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start py-spy recording `pid` for `duration` seconds into `output` (raw collapsed stacks)."""
    executable = py_spy_path()
    if executable is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    command = [
        executable, "record", "--nonblocking", "--format", "raw", "--rate", str(SAMPLE_RATE),
        "--duration", str(max(1, round(duration))), "--output", str(output), "--pid", str(pid),
    ]
    with open(log, "ab") as log_file:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)


def read_profile(path: Path) -> Profile:
    """Aggregate py-spy raw output. Frames that differ only by line number count as one."""
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    stacks: list[tuple[frozenset[str], int]] = []
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        samples += count
        self_counts[frames[-1]] += count
        distinct = frozenset(frames)
        stacks.append((distinct, count))
        for frame in distinct:
            inclusive_counts[frame] += count
    return Profile(samples, self_counts, inclusive_counts, stacks)


def summarize(profile: Profile, *, top: int = 25) -> dict[str, Any]:
    """Return the top frames by self and by inclusive share, for the JSON output and the report.

    The inclusive list leaves out the frames with the highest count, which are the chain
    of callers every busy sample shares (the module, uvicorn.run, the event loop).
    """
    root_count = max(profile.inclusive_counts.values(), default=0)
    inclusive = [(frame, hits, share) for frame, hits, share in profile.top(top * 3, inclusive=True)
                 if hits < root_count]
    return {
        "samples": profile.samples,
        "root_share": root_count / profile.samples if profile.samples else 0.0,
        "self": [{"frame": frame, "samples": hits, "share": share} for frame, hits, share in
                 profile.top(top, inclusive=False)],
        "inclusive": [{"frame": frame, "samples": hits, "share": share} for frame, hits, share in inclusive[:top]],
    }


def format_summary(title: str, summary: dict[str, Any], *, rows: int = 15) -> str:
    lines = [f"{title}: {summary['samples']} samples"]
    lines.append("  inclusive share (the frame or anything it calls):")
    for row in summary["inclusive"][:rows]:
        lines.append(f"    {row['share'] * 100:5.1f}%  {row['frame']}")
    lines.append("  self share (the frame itself):")
    for row in summary["self"][:rows]:
        lines.append(f"    {row['share'] * 100:5.1f}%  {row['frame']}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match.group('function')} ({match.group('file')})"
