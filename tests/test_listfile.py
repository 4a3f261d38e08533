"""List-file parsing: ImageNet-LT style `relative/path label` lines, errors with file:line, round trips."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmkd.data import load_image_list
from vlmkd.data.listfile import MAX_CLASSES, read_classnames, read_list_file, write_list_file
from vlmkd.errors import InputError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "list.txt"
    path.write_text(text)
    return path


def test_reads_imagenet_lt_lines_with_comments_blank_lines_and_spaces_in_names(tmp_path: Path) -> None:
    text = "# header\ntrain/n01440764/n01440764_10026.JPEG 0\n\n  a b/c d.jpg   7  \r\nx\\y.png 3\n"
    assert read_list_file(write(tmp_path, text)) == [
        ("train/n01440764/n01440764_10026.JPEG", 0),
        ("a b/c d.jpg", 7),
        ("x/y.png", 3),
    ]


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (["a.png 0", "b.png"], 2, "expected 'relative/path label'"),
        (["a.png 0", "b.png zero"], 2, "is not an integer"),
        (["a.png 1.5"], 1, "is not an integer"),
        (["a.png -1"], 1, "is negative"),
        (["a.png 0", "", "../b.png 0"], 3, "escapes the dataset root"),
        (["a/../../b.png 0"], 1, "escapes the dataset root"),
        (["/etc/passwd 0"], 1, "is absolute"),
        (["C:\\data\\a.png 0"], 1, "is absolute"),
        (["a.png 0", "./a.png 1"], 2, "duplicate entry 'a.png' (first on line 1)"),
    ],
)
def test_malformed_lines_are_rejected_with_their_line_number(
    tmp_path: Path, lines: list[str], line_number: int, message: str
) -> None:
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(InputError) as raised:
        read_list_file(path)
    assert f"{path}:{line_number}: " in str(raised.value)
    assert message in str(raised.value)


def test_unknown_label_is_rejected_with_its_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png 0\nb.png 2\nc.png 3\n")
    (tmp_path / "classnames.txt").write_text("cat\ndog\nbird\n")
    with pytest.raises(InputError, match=r"list\.txt:3: label 3 is out of range \[0, 3\)"):
        load_image_list(path)


def test_empty_list_file_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no entries"):
        read_list_file(write(tmp_path, "# only a comment\n\n"))
    with pytest.raises(InputError, match="cannot read list file"):
        read_list_file(tmp_path / "absent.txt")


def test_blank_class_name_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("cat\n\ndog\n")
    with pytest.raises(InputError, match=r"names\.txt:2: empty class name"):
        read_classnames(path)


def test_writer_refuses_paths_it_could_not_read_back(tmp_path: Path) -> None:
    for bad in ("../up.png", "/abs.png", "trailing.png ", "new\nline.png", "a//b.png"):
        with pytest.raises(InputError):
            write_list_file(tmp_path / "out.txt", [(bad, 0)])


# Path segments: printable, no separators, never "." or "..", no leading/trailing whitespace.
segment = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and s not in (".", "..")
)
relative_path = st.lists(segment, min_size=1, max_size=3).map("/".join)
entries = st.dictionaries(relative_path, st.integers(0, MAX_CLASSES - 1), min_size=1, max_size=20).map(
    lambda d: sorted(d.items())
)


@settings(max_examples=60, deadline=None)
@given(entries)
def test_write_then_read_round_trips_any_valid_entries(tmp_path_factory, items: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("roundtrip") / "list.txt"
    write_list_file(path, items)
    assert read_list_file(path) == items


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=40))
def test_parser_accepts_or_rejects_any_line_but_never_escapes_the_root(tmp_path_factory, line: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "list.txt"
    path.write_text(line + "\nok.png 0\n")
    try:
        parsed = read_list_file(path)
    except InputError as error:
        assert f"{path}:" in str(error)  # every error names the file
        return
    root = Path("/root-dir")
    for relative, label in parsed:
        assert label >= 0
        assert (root / relative).resolve().is_relative_to(root)
        assert relative not in ("", ".")
