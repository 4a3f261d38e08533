"""Both loaders: same files, same order, same labels and indices; eval numerics agree; sharding; determinism."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from vlmkd.data import ImageList, load_image_list
from vlmkd.data.loaders import build_loader
from vlmkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vlmkd.errors import InputError, MissingDependencyError

# DALI is optional at install time; CI installs it (`.[all]`), so the DALI tests run there.
requires_dali = pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs NVIDIA DALI")
LOADERS = ("torch", pytest.param("dali", marks=requires_dali))
BOTH = ("torch", "dali")
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to 0-255 pixel units."""
    return (images.cpu() * STD + MEAN) * 255


def read_all(batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    images, labels, indices, sizes = [], [], [], []
    for x, y, i in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and i.dtype == torch.int64
        assert x.shape[1] == 3 and x.shape[0] == y.shape[0] == i.shape[0]
        images.append(x.cpu())
        labels.append(y)
        indices.append(i)
        sizes.append(len(y))
    if not sizes:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), sizes
    return torch.cat(images), torch.cat(labels), torch.cat(indices), sizes


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory: pytest.TempPathFactory) -> ImageList:
    """17 smooth RGB images of assorted sizes and aspect ratios, PNG and JPEG, 3 classes."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    shapes = [(28, 28), (40, 30), (30, 52), (64, 48), (33, 33), (20, 26), (48, 64), (36, 36), (50, 40)]
    lines = []
    for k in range(17):
        height, width = shapes[k % len(shapes)]
        noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        suffix = "jpg" if k % 4 == 3 else "png"
        relative = f"img {k:02d}.{suffix}"  # a space in the name, as list files allow
        noise.filter(ImageFilter.GaussianBlur(1.5)).save(root / relative, quality=95)
        lines.append(f"{relative} {k % 3}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return load_image_list(root / "list.txt")


@requires_dali
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(("batch_size", "world_size"), [(4, 1), (5, 3), (32, 2)])
def test_both_loaders_yield_the_same_labels_and_indices(
    mixed_sizes: ImageList, train: bool, batch_size: int, world_size: int
) -> None:
    for rank in range(world_size):
        results = {}
        for name in BOTH:
            batches = build_loader(
                mixed_sizes,
                loader=name,
                train=train,
                batch_size=batch_size,
                image_size=16,
                num_workers=0 if name == "torch" else 1,
                seed=7,
                rank=rank,
                world_size=world_size,
            )
            batches.set_epoch(3)
            results[name] = read_all(batches)
            assert len(batches) == len(results[name][3])
        (_, y_torch, i_torch, sizes_torch), (_, y_dali, i_dali, sizes_dali) = results["torch"], results["dali"]
        assert torch.equal(i_torch, i_dali) and torch.equal(y_torch, y_dali) and sizes_torch == sizes_dali
        assert torch.equal(y_torch, torch.from_numpy(mixed_sizes.labels())[i_torch])


@pytest.mark.parametrize("name", LOADERS)
def test_ranks_read_disjoint_slices_covering_the_dataset(mixed_sizes: ImageList, name: str) -> None:
    for train, world_size in ((False, 3), (True, 3), (True, 4)):
        seen = []
        for rank in range(world_size):
            batches = build_loader(
                mixed_sizes,
                loader=name,
                train=train,
                batch_size=2,
                image_size=8,
                num_workers=0,
                rank=rank,
                world_size=world_size,
                drop_last=False,
            )
            seen.append(read_all(batches)[2].tolist())
        flat = [i for part in seen for i in part]
        assert len(flat) == len(set(flat))
        if train:  # the tail is cut so every rank gets as many images
            assert len({len(part) for part in seen}) == 1
            assert len(flat) == len(mixed_sizes) - len(mixed_sizes) % world_size
        else:
            assert flat == list(range(len(mixed_sizes)))


@requires_dali
def test_eval_transform_agrees_numerically_between_loaders(mixed_sizes: ImageList) -> None:
    for image_size in (16, 24, 40):
        got = {
            name: read_all(
                build_loader(mixed_sizes, loader=name, train=False, batch_size=6, image_size=image_size, num_workers=1)
            )[0]
            for name in BOTH
        }
        difference = (pixels(got["torch"]) - pixels(got["dali"])).abs()
        # Both resample bilinearly with antialiasing; they differ only by uint8 rounding and filter tails.
        assert difference.mean() < 0.35, image_size
        assert difference.max() <= 3.01, image_size


@pytest.mark.parametrize("name", LOADERS)
def test_eval_at_native_size_returns_the_original_pixels(tiny_dataset: ImageList, name: str) -> None:
    images, _, indices, _ = read_all(
        build_loader(tiny_dataset, loader=name, train=False, batch_size=5, image_size=32, num_workers=1)
    )
    expected = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(tiny_dataset.path(i))).copy()).permute(2, 0, 1) for i in indices]
    ).float()
    assert (pixels(images) - expected).abs().max() < 1e-3


@pytest.mark.parametrize("name", LOADERS)
def test_full_crop_without_flip_equals_eval_and_flip_mirrors(tiny_dataset: ImageList, name: str) -> None:
    common = dict(loader=name, batch_size=12, image_size=32, num_workers=1, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    reference, _, reference_indices, _ = read_all(build_loader(tiny_dataset, train=False, **common))
    by_index = {int(i): image for i, image in zip(reference_indices, reference, strict=True)}
    plain, _, indices, _ = read_all(build_loader(tiny_dataset, train=True, flip=False, **common))
    for i, image in zip(indices.tolist(), plain, strict=True):
        assert torch.allclose(image, by_index[i], atol=1e-5)
    flipped, _, indices, _ = read_all(build_loader(tiny_dataset, train=True, flip=True, **common))
    mirrored = [
        torch.allclose(image, by_index[i].flip(-1), atol=1e-5)
        for i, image in zip(indices.tolist(), flipped, strict=True)
    ]
    same = [torch.allclose(image, by_index[i], atol=1e-5) for i, image in zip(indices.tolist(), flipped, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and any(mirrored) and any(same)


@pytest.mark.parametrize("name", LOADERS)
def test_order_and_augmentation_are_a_function_of_seed_epoch_and_rank(mixed_sizes: ImageList, name: str) -> None:
    def epoch(seed: int, number: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        batches = build_loader(
            mixed_sizes, loader=name, train=True, batch_size=4, image_size=16, num_workers=workers, seed=seed
        )
        batches.set_epoch(number)
        images, _, indices, _ = read_all(batches)
        return images, indices

    images, indices = epoch(seed=1, number=2, workers=1)
    again_images, again_indices = epoch(seed=1, number=2, workers=2)  # a resumed run, other worker count
    assert torch.equal(indices, again_indices) and torch.equal(images, again_images)
    other_images, other_indices = epoch(seed=1, number=3, workers=1)
    assert not torch.equal(indices, other_indices)
    assert not torch.equal(epoch(seed=2, number=2, workers=1)[1], indices)


def test_train_crops_lie_inside_the_images_area_range(mixed_sizes: ImageList) -> None:
    from vlmkd.data.transforms import random_resized_crop_box

    rng = np.random.default_rng(0)
    for width, height in ((28, 28), (64, 20), (5, 300)):
        for _ in range(200):
            left, top, right, bottom = random_resized_crop_box(width, height, (0.35, 1.0), (3 / 4, 4 / 3), rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_unknown_loader_and_bad_arguments_are_input_errors(tiny_dataset: ImageList) -> None:
    with pytest.raises(InputError, match="loader must be one of torch, dali"):
        build_loader(tiny_dataset, loader="jax", train=False, batch_size=2, image_size=8)
    with pytest.raises(InputError, match="rank"):
        build_loader(tiny_dataset, train=False, batch_size=2, image_size=8, rank=2, world_size=2)
    with pytest.raises(InputError, match="without any image"):
        build_loader(tiny_dataset, train=False, batch_size=2, image_size=8, rank=0, world_size=13)
    with pytest.raises(InputError, match="without any image"):
        build_loader(tiny_dataset, loader="dali", train=True, batch_size=2, image_size=8, rank=12, world_size=13)


def test_missing_dali_is_a_clear_dependency_error(tiny_dataset: ImageList, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmkd.data import dali_loader

    build = dali_loader.DaliBuild("nvidia-dali-cuda120", "2.4.0", 12)
    monkeypatch.setattr(dali_loader, "installed_dali", lambda: build)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # installed by its metadata, but not importable
    with pytest.raises(MissingDependencyError, match=r"does not import .*--force-reinstall nvidia-dali-cuda120"):
        build_loader(tiny_dataset, loader="dali", train=False, batch_size=2, image_size=8)
    monkeypatch.setattr(dali_loader, "installed_dali", lambda: None)  # no DALI wheel at all
    with pytest.raises(MissingDependencyError, match=r"pip install 'vlmkd\[dali-cuda13\]'.*'vlmkd\[dali-cuda12\]'"):
        build_loader(tiny_dataset, loader="dali", train=False, batch_size=2, image_size=8)


@requires_dali
def test_demo_digits_load_through_both_loaders(tmp_path: Path) -> None:
    from vlmkd.data.demo import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", test_per_class=2, max_train_per_class=4)
    got = {
        name: read_all(build_loader(demo.test, loader=name, train=False, batch_size=8, image_size=28, num_workers=1))
        for name in BOTH
    }
    assert torch.equal(got["torch"][2], got["dali"][2])
    gray = pixels(got["dali"][0])  # grayscale PNG -> three equal channels, original digits
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-3) and torch.allclose(gray[:, 0], gray[:, 2], atol=1e-3)
    assert (pixels(got["torch"][0]) - gray).abs().max() < 1e-3


@pytest.mark.parametrize("name", LOADERS)
def test_consecutive_epochs_on_one_loader_match_fresh_loaders(mixed_sizes: ImageList, name: str) -> None:
    def loader():
        return build_loader(mixed_sizes, loader=name, train=True, batch_size=4, image_size=12, num_workers=1, seed=5)

    running = loader()
    for number in (0, 1, 1, 4):
        running.set_epoch(number)
        fresh = loader()
        fresh.set_epoch(number)
        got, expected = read_all(running), read_all(fresh)
        assert torch.equal(got[2], expected[2]) and torch.equal(got[0], expected[0])


@requires_dali
@pytest.mark.requires_cuda
def test_dali_decodes_on_the_gpu_when_there_is_one(tiny_dataset: ImageList) -> None:
    dali_images, _, dali_indices, _ = read_all(
        build_loader(tiny_dataset, loader="dali", train=False, batch_size=5, image_size=32, num_workers=1)
    )
    batch = next(iter(build_loader(tiny_dataset, loader="dali", train=False, batch_size=5, image_size=32)))
    assert batch[0].is_cuda and not batch[1].is_cuda and not batch[2].is_cuda
    torch_images, _, torch_indices, _ = read_all(
        build_loader(tiny_dataset, loader="torch", train=False, batch_size=5, image_size=32, num_workers=1)
    )
    assert torch.equal(dali_indices, torch_indices)
    assert (pixels(dali_images) - pixels(torch_images)).abs().max() < 1e-3


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_corrupt_image_is_a_one_line_error_naming_the_file_even_from_a_worker(
    tiny_dataset: ImageList, num_workers: int
) -> None:
    corrupt = tiny_dataset.path(3)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    batches = build_loader(tiny_dataset, train=False, batch_size=4, image_size=32, num_workers=num_workers)
    with pytest.raises(InputError) as error:
        list(batches)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(corrupt))


def _exif_dataset(root: Path) -> ImageList:
    """Two JPEGs stored sideways with an EXIF orientation (6: rotate 90 degrees clockwise to view), 24x12."""
    root.mkdir(parents=True, exist_ok=True)
    stored = np.zeros((12, 24, 3), dtype=np.uint8)
    stored[:, 12:] = 255  # right half white as stored: the bottom half once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    for k in range(2):
        Image.fromarray(stored).save(root / f"{k}.jpg", quality=95, exif=exif.tobytes())
    (root / "list.txt").write_text("0.jpg 0\n1.jpg 1\n")
    return load_image_list(root / "list.txt")


@pytest.mark.parametrize("name", LOADERS)
def test_both_loaders_apply_exif_orientation(tmp_path: Path, name: str) -> None:
    dataset = _exif_dataset(tmp_path / "exif")
    images = pixels(read_all(build_loader(dataset, loader=name, train=False, batch_size=2, image_size=12,
                                          num_workers=1))[0])  # fmt: skip
    # upright the image is 12 wide x 24 high: the central square is the middle, black on top, white below
    top, bottom = images[:, :, :5].mean(), images[:, :, 7:].mean()
    assert top < 30 and bottom > 225, (top, bottom)


@requires_dali
def test_dali_loader_refuses_a_16_bit_image_the_torch_loader_rescales(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    root.mkdir()
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype("<u2")
    Image.frombytes("I;16", (8, 8), values.tobytes()).save(root / "0.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "1.png")
    (root / "list.txt").write_text("0.png 0\n1.png 1\n")
    dataset = load_image_list(root / "list.txt")
    with pytest.raises(InputError, match=rf"{root / '0.png'}: high-bit-depth image \(mode I.*--loader torch"):
        build_loader(dataset, loader="dali", train=False, batch_size=2, image_size=8, num_workers=1)
    got = pixels(read_all(build_loader(dataset, loader="torch", train=False, batch_size=2, image_size=8,
                                       num_workers=0))[0])[0, 0]  # fmt: skip
    expected = torch.from_numpy(np.rint(values.astype(np.float64) * 255 / 65535)).float()
    assert (got - expected).abs().max() < 0.01
