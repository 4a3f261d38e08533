"""ImageList loading: ImageFolder directories and list files with their roots and class names."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmkd.data import load_image_list
from vlmkd.errors import InputError


def test_image_folder_classes_are_sorted_subfolders_and_non_images_are_skipped(tmp_path: Path) -> None:
    for relative in ("dog/b.png", "dog/a.JPG", "cat/x/deep.jpeg", "cat/notes.txt", "ant/1.webp"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    dataset = load_image_list(tmp_path)
    assert dataset.classnames == ("ant", "cat", "dog")
    assert [(s.path, s.label) for s in dataset.samples] == [
        ("ant/1.webp", 0),
        ("cat/x/deep.jpeg", 1),
        ("dog/a.JPG", 2),
        ("dog/b.png", 2),
    ]
    (tmp_path / "names.txt").write_text("ant\ncat\n")
    with pytest.raises(InputError, match="2 class names for 3 class folders"):
        load_image_list(tmp_path, classnames=tmp_path / "names.txt")


def test_list_file_root_and_default_class_names(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("img/a.jpg 0\nimg/b.jpg 2\n")
    dataset = load_image_list(tmp_path / "lists" / "train.txt", root=tmp_path)
    assert dataset.path(1) == tmp_path / "img" / "b.jpg"
    assert dataset.classnames == ("class_0", "class_1", "class_2")
    assert dataset.class_counts().tolist() == [1, 0, 1]
    same = load_image_list(tmp_path / "lists" / "train.txt", root=tmp_path / "elsewhere")
    assert same.fingerprint() == dataset.fingerprint()  # the root is not part of the identity
