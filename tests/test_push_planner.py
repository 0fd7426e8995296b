"""Unit tests of multipart part planning, `stratus push` argument parsing and progress output."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratus.push.command import add_push_arguments
from stratus.push.parts import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    choose_part_size,
    plan_parts,
)
from stratus.push.progress import LineProgress, Progress, TerminalProgress, format_bytes, open_progress


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=MAX_OBJECT_SIZE),
    preferred=st.integers(min_value=1, max_value=6 * 1024 * MIB),
)
def test_part_size_within_s3_limits(size: int, preferred: int) -> None:
    part_size = choose_part_size(size, preferred)
    assert MIN_PART_SIZE <= part_size <= MAX_PART_SIZE
    assert -(-size // part_size) <= MAX_PARTS


@pytest.mark.parametrize("size", [MAX_OBJECT_SIZE, MAX_OBJECT_SIZE - 1, 10_000 * 8 * MIB + 1, 1024**4, 5 * MIB])
def test_plan_parts_covers_blob(size: int) -> None:
    parts = plan_parts(size, 8 * MIB)
    assert len(parts) <= MAX_PARTS
    assert [part.number for part in parts] == list(range(1, len(parts) + 1))
    assert parts[0].offset == 0
    for previous, part in zip(parts, parts[1:]):
        assert part.offset == previous.offset + previous.length
        assert previous.length >= MIN_PART_SIZE
    assert parts[-1].offset + parts[-1].length == size
    assert all(part.length <= MAX_PART_SIZE for part in parts)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=1, max_value=64 * MIB), preferred=st.integers(min_value=1, max_value=8 * MIB))
def test_plan_parts_small_minimum(size: int, preferred: int) -> None:
    parts = plan_parts(size, preferred, min_part_size=1)
    assert sum(part.length for part in parts) == size
    assert all(part.length == parts[0].length for part in parts[:-1])
    assert 0 < parts[-1].length <= parts[0].length


def test_part_size_kept_when_it_fits() -> None:
    assert choose_part_size(100 * MIB, 8 * MIB) == 8 * MIB
    assert choose_part_size(100 * MIB, 1) == MIN_PART_SIZE
    assert choose_part_size(100 * MIB, 10 * 1024 * MIB) == MAX_PART_SIZE


def test_part_size_grows_for_five_tebibytes() -> None:
    part_size = choose_part_size(MAX_OBJECT_SIZE, 8 * MIB)
    assert part_size == 525 * MIB
    assert len(plan_parts(MAX_OBJECT_SIZE, 8 * MIB)) == 9987


def test_part_size_rejects_oversized_blob() -> None:
    with pytest.raises(ValueError, match="more than the S3 object size limit"):
        choose_part_size(MAX_OBJECT_SIZE + 1, 8 * MIB)


def parse(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stratus push")
    add_push_arguments(parser)
    return parser.parse_args(arguments)


def test_push_arguments_defaults() -> None:
    arguments = parse(["image.tar", "app:1.0"])
    assert arguments.layout == "image.tar"
    assert arguments.target == "app:1.0"
    assert arguments.layout_reference is None
    assert arguments.concurrency is None
    assert arguments.part_size == 8 * MIB
    assert arguments.multipart_threshold == 8 * MIB


@pytest.mark.parametrize(
    ("text", "size"),
    [("5242880", 5 * MIB), ("5MiB", 5 * MIB), ("5M", 5 * MIB), ("64KiB", 64 * 1024), ("1GiB", 1024 * MIB), ("7b", 7)],
)
def test_push_arguments_sizes(text: str, size: int) -> None:
    assert parse(["dir", "app", "--part-size", text]).part_size == size


@pytest.mark.parametrize("arguments", [["dir", "app", "--part-size", "5MB!"], ["dir", "app", "-j", "0"],
                                       ["dir", "app", "--part-size", "6GiB"], ["dir"]])
def test_push_arguments_invalid(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(arguments)
    assert caught.value.code == 2


def test_push_arguments_from_and_concurrency() -> None:
    arguments = parse(["dir", "app", "--from", "docker.io/library/x:1", "-j", "3"])
    assert arguments.layout_reference == "docker.io/library/x:1"
    assert arguments.concurrency == 3


class FakeTerminal:
    def __init__(self, tty: bool) -> None:
        self.text = ""
        self.tty = tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_on_terminal() -> None:
    terminal = FakeTerminal(tty=True)
    progress = open_progress(terminal)  # type: ignore[arg-type]
    assert isinstance(progress, TerminalProgress)
    progress.start(4 * MIB)
    progress.message("sha256:abc: uploaded 2.0 MiB")
    progress.advance(2 * MIB)
    progress.finish()
    assert "sha256:abc: uploaded 2.0 MiB\n" in terminal.text
    assert "/ 4.0 MiB" in terminal.text
    assert "2.0 MiB / 4.0 MiB" in terminal.text
    assert "B/s" in terminal.text
    assert terminal.text.endswith("\n")


def test_progress_lines_elsewhere() -> None:
    pipe = FakeTerminal(tty=False)
    progress = open_progress(pipe)  # type: ignore[arg-type]
    assert isinstance(progress, LineProgress)
    progress.start(10)
    progress.advance(10)
    progress.message("done")
    progress.finish()
    assert pipe.text == "done\n"
    assert type(open_progress(None)) is Progress


@pytest.mark.parametrize(("count", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MIB, "5.0 MiB")])
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text
