"""The fenced blocks of the project's Markdown, for tests that run or type-check the docs as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[^\n`]*)\n(?P<text>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE)
COMMENT = re.compile(r"^<!--\s*(?P<comment>.*?)\s*-->$")
FILE_COMMENT = re.compile(r"# (vlmkd/[\w/]+\.py)\n")


@dataclass(frozen=True)
class CodeBlock:
    text: str
    markdown: str  # the file it is in, relative to the repository root
    line: int  # the Markdown line of its first line of code
    language: str = "python"  # the fence's info string: python, bash, text, yaml... ("" when it has none)
    comment: str | None = None  # the HTML comment on the line just before the fence (`not-run: gpu`), if any

    @property
    def source(self) -> str:
        """`docs/extending.md:42`: where the block is, for messages and tracebacks."""
        return f"{self.markdown}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file the block goes in, named by its first line (`# vlmkd/models/zoo.py`), if it names one."""
        found = FILE_COMMENT.match(self.text)
        return found.group(1) if found else None

    @property
    def module(self) -> str | None:
        """`vlmkd.models.zoo` for a block that goes in vlmkd/models/zoo.py (`vlmkd.caption.engines` for an
        `__init__.py`)."""
        if self.file is None:
            return None
        return self.file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")

    @property
    def adds_to_existing_file(self) -> bool:
        return self.file is not None and (ROOT / self.file).is_file()


def blocks(markdown: str) -> list[CodeBlock]:
    """Every fenced block of `markdown` (a path relative to the repository root), in order."""
    text = (ROOT / markdown).read_text()
    found_blocks = []
    for found in FENCE.finditer(text):
        line_before = text[: found.start() - 1].rpartition("\n")[2]  # exactly the line above the fence
        comment = COMMENT.match(line_before.strip())
        line = text.count("\n", 0, found.start("text")) + 1
        code, language = unindent(found["text"], found["indent"]), found["language"].strip()
        found_blocks.append(CodeBlock(code, markdown, line, language, comment and comment["comment"]))
    return found_blocks


def unindent(text: str, indent: str) -> str:
    """A fenced block's code without the indentation of its fence (a block inside a list item)."""
    return "".join(line.removeprefix(indent) for line in text.splitlines(keepends=True))


def python_blocks(markdown: str) -> list[CodeBlock]:
    """Every ```python block of `markdown` (a path relative to the repository root), in order."""
    return [block for block in blocks(markdown) if block.language == "python"]


def block_after(markdown: str, marker: str) -> CodeBlock:
    """The first ```python block after the line `marker` (an HTML comment such as `<!-- notebook-example -->`)."""
    text = (ROOT / markdown).read_text()
    assert marker in text, f"{markdown} lost its {marker} marker"
    marker_line = text.count("\n", 0, text.index(marker)) + 1
    return next(block for block in python_blocks(markdown) if block.line > marker_line)
