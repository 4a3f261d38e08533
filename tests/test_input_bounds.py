"""Datasets as users really leave them, and inputs sized to hurt: each is read right or refused in one bounded
line before anything large is allocated (docs/reliability.md, rule 5 and the round-three cases)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.cli import main as vlmkd_main
from vlmkd.data import load_image_list, load_rgb
from vlmkd.data.images import MAX_DECODE_BYTES, decode_bytes
from vlmkd.data.listfile import MAX_CLASSES, read_list_file, write_list_file
from vlmkd.errors import InputError

MESSAGE_LIMIT = 600  # characters: a one-line error names the file and line, and quotes at most a few dozen


def _png(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels)


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vlmkd {command}: error: "), err[:2000]
    return lines[0]


# ------------------------------------------------------------------------------------- ImageFolder datasets
def test_hidden_folders_and_files_of_an_image_folder_are_not_classes_or_images(tmp_path: Path) -> None:
    """Jupyter's `.ipynb_checkpoints/` (empty at the top, holding copies inside a class) and macOS `._` files:
    once an empty hidden folder became class 0 and shifted every label by one."""
    root = tmp_path / "folder"
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    for name in ("cat/1.png", "cat/2.png", "dog/3.png", "dog/.ipynb_checkpoints/3-checkpoint.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _png(pixels).save(root / name)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "cat" / "._1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    dataset = load_image_list(root)
    assert dataset.classnames == ("cat", "dog")
    assert [(s.path, s.label) for s in dataset.samples] == [("cat/1.png", 0), ("cat/2.png", 0), ("dog/3.png", 1)]


def test_an_image_folder_of_hidden_folders_only_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "folder" / ".ipynb_checkpoints").mkdir(parents=True)
    assert vlmkd_main(["data", "info", str(tmp_path / "folder")]) == 2
    assert "no class subdirectories (hidden ones such as .ipynb_checkpoints" in one_line(capsys, "data")


# ---------------------------------------------------------------------------------------------- list files
@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x1c"])
def test_a_file_name_holding_a_unicode_line_separator_is_one_entry(tmp_path: Path, separator: str) -> None:
    """`str.splitlines` splits at U+2028 and other separators that are valid in file names: once such a name
    was read as two lines (two broken entries)."""
    name = f"images/a{separator}b.png"
    (tmp_path / "images").mkdir()
    _png(np.full((4, 4, 3), 200, dtype=np.uint8)).save(tmp_path / name, format="PNG")
    _png(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    listing = tmp_path / "train.txt"
    listing.write_text(f"{name} 0\r\nc.png 1\n", encoding="utf-8")
    dataset = load_image_list(listing)
    assert [(s.path, s.label) for s in dataset.samples] == [(name, 0), ("c.png", 1)]
    assert np.asarray(load_rgb(dataset.path(0))).max() == 200
    written = tmp_path / "again.txt"
    write_list_file(written, [(s.path, s.label) for s in dataset.samples])  # and it round-trips
    assert read_list_file(written) == [(name, 0), ("c.png", 1)]


HUGE = "x" * 1_000_000
HUGE_LINES = {
    "path-too-long": f"{HUGE}.png 0\n",
    "no-label": f"{HUGE}\n",
    "label-of-a-million-digits": f"a.png {'9' * 1_000_000}\n",
    "escapes-root": f"../{HUGE} 0\n",
    "absolute": f"/{HUGE} 0\n",
    "name-too-long": f"images/{'n' * 300}.png 0\n",
    "label-beyond-the-class-limit": "a.png 1000000000000\n",
}


@pytest.mark.parametrize("case", HUGE_LINES)
def test_a_huge_list_line_gives_a_bounded_one_line_error(tmp_path: Path, capsys, case: str) -> None:
    """A 1 MB path once gave a one-line error 2 MB long; a label of 10^12 sized a list of 10^12 class names."""
    listing = tmp_path / "train.txt"
    listing.write_text(HUGE_LINES[case], encoding="utf-8")
    assert vlmkd_main(["data", "info", str(listing)]) == 2
    line = one_line(capsys, "data")
    assert f"{listing}:1: " in line and len(line) < MESSAGE_LIMIT, line[:MESSAGE_LIMIT]


def test_labels_up_to_the_class_limit_are_read(tmp_path: Path) -> None:
    listing = tmp_path / "train.txt"
    listing.write_text(f"a.png {MAX_CLASSES - 1}\n", encoding="utf-8")
    assert read_list_file(listing) == [("a.png", MAX_CLASSES - 1)]


# ------------------------------------------------------------------------------------------------- images
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray16_png(width: int, height: int) -> bytes:
    """A valid, fully decodable 16-bit grayscale PNG of zeros: tiny on disk, `width * height * 2` bytes decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 2 * width)  # filter byte 0, then the row
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def test_a_16_bit_image_under_the_pixel_limit_is_refused_by_its_decoded_bytes(tmp_path: Path, capsys) -> None:
    """12000 x 12000 16-bit: 144 Mpx is under the pixel limit, but the 280 KB file once took 4.5 GB and 23 s
    to decode (`vlmkd data load`). Refused from the header, by bytes per pixel."""
    path = tmp_path / "images" / "big.png"
    path.parent.mkdir()
    path.write_bytes(gray16_png(12000, 12000))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: image of 12000x12000 pixels in mode I;16 .* GiB"):
        load_rgb(path)
    (tmp_path / "train.txt").write_text("images/big.png 0\n")
    assert vlmkd_main(["data", "load", str(tmp_path / "train.txt"), "--workers", "0", "--image-size", "8"]) == 2
    assert "GiB to decode" in one_line(capsys, "data")


def test_an_8_bit_rgb_image_at_the_pixel_limit_fits_the_decode_budget() -> None:
    """The budget refuses nothing the pixel limit lets through in 8-bit RGB, the common case."""
    from vlmkd.data.images import MAX_IMAGE_PIXELS

    assert decode_bytes("RGB", MAX_IMAGE_PIXELS) <= MAX_DECODE_BYTES
    assert decode_bytes("I;16", 12000 * 12000) > MAX_DECODE_BYTES


_PEAK_SCRIPT = """
import sys
from pathlib import Path
from vlmkd.data import load_rgb

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
image = load_rgb(Path(sys.argv[1]))
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "F"])
def test_the_decode_estimate_bounds_the_real_peak_memory(tmp_path: Path, mode: str) -> None:
    """`decode_bytes` is an upper bound of what decoding really takes (peak RSS growth, Linux's VmHWM)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
    side = 2000
    rng = np.random.default_rng(0)
    path = tmp_path / f"image.{'tiff' if mode == 'F' else 'png'}"
    if mode == "I;16":
        path.write_bytes(gray16_png(side, side))
    elif mode == "F":
        Image.fromarray(rng.random((side, side), dtype=np.float32), mode="F").save(path)
    else:
        shape = (side, side) if mode == "L" else (side, side, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    peak = int(done.stdout.split()[-1])
    estimate = decode_bytes(mode, side * side)
    assert 0 < peak <= estimate, json.dumps({"mode": mode, "peak": peak, "estimate": estimate})


# ---------------------------------------------------------------------------------- rule 5 across commands
def _command_reading(command: str, listing: Path, tmp_path: Path) -> list[str]:
    """The command line of each command that reads a list file, pointed at `listing`."""
    return {
        "data info": ["data", "info", str(listing)],
        "data load": ["data", "load", str(listing), "--workers", "0", "--image-size", "8"],
        "caption": [
            "caption",
            str(listing),
            "--model",
            str(tmp_path / "no-model"),
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ],  # fmt: skip
        "train": [
            "train",
            "--train",
            str(listing),
            "--output",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--num-workers",
            "0",
            "--no-progress",
        ],  # fmt: skip
    }[command]


@pytest.mark.parametrize("command", ["data info", "data load", "caption", "train"])
@pytest.mark.parametrize("case", ["path-too-long", "label-of-a-million-digits", "label-beyond-the-class-limit"])
def test_every_command_reading_a_list_file_bounds_a_huge_line_before_sizing_anything(tmp_path, capsys, command, case):
    """Rule 5 across commands: what a list line sizes (a path, a label, the class count it implies) is checked
    before anything is allocated from it, and the message quoting it stays one short line, in every command
    that reads a list file, and nothing is written."""
    listing = tmp_path / "train.txt"
    listing.write_text(HUGE_LINES[case], encoding="utf-8")
    argv = _command_reading(command, listing, tmp_path)
    assert vlmkd_main(argv) == 2
    line = one_line(capsys, argv[0])
    assert f"{listing}:1: " in line and len(line) < MESSAGE_LIMIT, line[:MESSAGE_LIMIT]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]


def test_captioning_skips_an_image_too_large_to_decode_and_records_why(tmp_path: Path) -> None:
    """Rule 5 in captioning: the 16-bit 12000 x 12000 PNG that took 4.5 GB to decode is skipped from its header
    (the decode budget), recorded in the store with the reason, and every other image is captioned."""
    from _scripted import PROMPTS, ScriptedEngine, plain

    import vlmkd
    from vlmkd.caption import CaptionStore

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "big.png").write_bytes(gray16_png(12000, 12000))
    _png(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "images" / "small.png")
    (tmp_path / "train.txt").write_text("images/big.png 0\nimages/small.png 1\n", encoding="utf-8")
    (tmp_path / "classnames.txt").write_text("zero\none\n", encoding="utf-8")
    dataset = load_image_list(tmp_path / "train.txt")
    vlmkd.caption(dataset=dataset, prompts=PROMPTS, engine=ScriptedEngine(plain), out=tmp_path / "s", progress=False)
    store = CaptionStore.open(tmp_path / "s")
    ((index, path, reason),) = store.failed_images()
    assert (index, path) == (0, "images/big.png") and "mode I;16 would take 1.9 GiB to decode" in reason, reason
    assert store.read_table().column("image_index").to_pylist() == [1, 1]


def _big_png_lists(tmp_path: Path) -> tuple[Path, Path]:
    """A training list of small images and a list with the 12000 x 12000 16-bit PNG among them."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "big.png").write_bytes(gray16_png(12000, 12000))
    for i in range(4):
        _png(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / "images" / f"s{i}.png")
    small = tmp_path / "small.txt"
    small.write_text("".join(f"images/s{i}.png {i % 2}\n" for i in range(4)), encoding="utf-8")
    with_big = tmp_path / "with_big.txt"
    with_big.write_text("images/s0.png 0\nimages/big.png 1\nimages/s2.png 0\nimages/s3.png 1\n", encoding="utf-8")
    return small, with_big


def test_train_and_eval_refuse_an_image_too_large_to_decode_in_one_line(tmp_path: Path, capsys) -> None:
    """Rule 5 in training and evaluation: the 16-bit 12000 x 12000 PNG is refused from its header, in one line
    naming the file, before 1.9 GiB is decoded; the training run it stops writes no model."""
    small, with_big = _big_png_lists(tmp_path)
    train = ["train", "--device", "cpu", "--epochs", "1", "--num-workers", "0", "--no-progress", "--image-size", "8",
             "--batch-size", "2"]  # fmt: skip
    big = tmp_path / "images" / "big.png"
    assert vlmkd_main([*train, "--train", str(with_big), "--output", str(tmp_path / "refused")]) == 2
    assert f"{big}: image of 12000x12000 pixels in mode I;16 would take 1.9 GiB" in one_line(capsys, "train")
    assert not (tmp_path / "refused" / "model.safetensors").exists()

    assert vlmkd_main([*train, "--train", str(small), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    argv = [
        "eval",
        str(tmp_path / "run"),
        str(with_big),
        "--out",
        str(tmp_path / "eval"),
        "--no-plots",
        "--num-workers",
        "0",
    ]
    assert vlmkd_main(argv) == 2
    assert f"{big}: image of 12000x12000 pixels in mode I;16 would take 1.9 GiB" in one_line(capsys, "eval")


def test_a_command_refusing_an_image_over_pils_own_limit_prints_only_its_line(tmp_path: Path) -> None:
    """144 Mpx is over PIL's 89 Mpx warning limit: a command's stderr is its one line, not PIL's two-line
    DecompressionBombWarning before it (a real process: pytest would capture the warning)."""
    _, with_big = _big_png_lists(tmp_path)
    argv = [sys.executable, "-m", "vlmkd", "data", "load", str(with_big), "--workers", "0", "--image-size", "8"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("vlmkd data: error: "), done.stderr
    assert "would take 1.9 GiB to decode" in done.stderr
