"""`vlmkd caption-info STORE --html OUT`: the static caption gallery, its escaping, its size, and how it
renders in a real headless Chromium; the caption-diversity figures against brute force."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.cli import run_command
from vlmkd.data import ImageList, load_image_list
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.reporting.diversity import mean_pairwise_cosine
from vlmkd.reporting.gallery import GalleryOptions, write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium; CI installs it)"
)
# A caption that would run if the page did not escape it: it sets the title and adds an element.
ATTACK = "<script>document.title='owned';document.body.append(Object.assign(document.createElement('p')," \
    "{id:'xss'+'marker'}))</script> & <img src=x onerror=\"document.title='owned'\">"  # fmt: skip
PROMPTS = {"G": "Describe this image.", "T1": "What is the {label}? <b>bold</b>"}


def make_dataset(root: Path, counts: tuple[int, ...] = (5, 3, 2), corrupt: int | None = None) -> ImageList:
    """Vivid random-colour PNGs, `counts[c]` for class c; image `corrupt` (if given) is not an image."""
    rng = np.random.default_rng(0)
    lines, index = [], 0
    for label, count in enumerate(counts):
        (root / "images" / str(label)).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            path = root / "images" / str(label) / f"{k}.png"
            if index == corrupt:
                path.write_bytes(b"not a png")
            else:
                colour = rng.integers(0, 256, 3)
                pixels = np.clip(colour + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path)
            lines.append(f"images/{label}/{k}.png {label}")
            index += 1
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("\n".join(f"class <{c}> & co" for c in range(len(counts))) + "\n")
    return load_image_list(root / "train.txt")


def make_store(root: Path, dataset: ImageList, caption_of, failed: dict[int, str] | None = None) -> CaptionStore:
    failed = failed or {}
    store = CaptionStore.create(
        root,
        make_manifest(
            dataset_fingerprint=dataset.fingerprint(),
            num_images=len(dataset),
            prompt_set=prompt_set_record("test <set>", PROMPTS),
            engine="test",
            model_id="model-<i>",
        ),
    )
    rows = [(i, s.path, p, caption_of(i, p)) for i, s in enumerate(dataset.samples) if i not in failed for p in PROMPTS]
    store.write_shard(0, rows, [(i, dataset.samples[i].path, reason) for i, reason in failed.items()])
    return store


def caption_with_attack(index: int, prompt: str) -> str:
    return ATTACK if index < 5 and prompt == "G" else f"image {index} under {prompt}: a <thing> & more"


@pytest.fixture
def gallery(tmp_path: Path) -> tuple[Path, ImageList, CaptionStore]:
    dataset = make_dataset(tmp_path / "data", corrupt=9)
    store = make_store(tmp_path / "captions", dataset, caption_with_attack, failed={9: "corrupt <png> & truncated"})
    out = tmp_path / "site" / "gallery.html"
    assert run_command("caption-info", [str(store.path), "--html", str(out), "--dataset", str(dataset.source)]) == 0
    return out, dataset, store


def test_every_caption_path_and_setting_is_escaped_and_the_page_has_no_script(gallery) -> None:
    out, dataset, store = gallery
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(ATTACK, quote=True) in page
    assert "a &lt;thing&gt; &amp; more" in page and "<thing>" not in page
    assert "class &lt;1&gt; &amp; co" in page and "test &lt;set&gt;" in page and "model-&lt;i&gt;" in page
    assert "What is the {label}? &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page
    assert "corrupt &lt;png&gt; &amp; truncated" in page  # the unreadable image, with its reason
    assert re.search(r"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'", page)


def test_the_gallery_shows_every_prompts_caption_of_a_seeded_sample_per_class(gallery, tmp_path: Path) -> None:
    out, dataset, store = gallery
    page = out.read_text(encoding="utf-8")
    shown = sorted(int(i) for i in re.findall(r'<div class="path">\[(\d+)\]', page))
    labels = dataset.labels()
    per_class = [sum(labels[i] == c for i in shown) for c in range(3)]
    assert per_class == [4, 3, 1]  # 4 per class at most; image 9 (class 2) is unreadable, so never sampled
    for index in shown:
        for prompt in PROMPTS:
            assert html.escape(caption_with_attack(index, prompt), quote=True) in page
        assert dataset.samples[index].path in page
    assert page.count('<img src="data:image/') == len(shown)  # embedded: no file or network access
    again = tmp_path / "again.html"
    write_gallery(store, again, dataset=dataset)
    assert again.read_text(encoding="utf-8").replace("again.html", "gallery.html") == page  # seeded: same sample


def test_wrong_dataset_and_bad_options_are_one_line_errors(gallery, tmp_path: Path) -> None:
    out, dataset, store = gallery
    other = make_dataset(tmp_path / "other", counts=(2, 2))
    with pytest.raises(StoreMismatchError, match="another dataset"):
        write_gallery(store, tmp_path / "x.html", dataset=other)
    with pytest.raises(InputError, match="--per-class must be at least 1"):
        write_gallery(store, tmp_path / "x.html", options=GalleryOptions(per_class=0))
    with pytest.raises(InputError, match="ending in .html"):
        write_gallery(store, tmp_path / "x.png")


def test_without_a_dataset_the_page_shows_a_sample_of_captions(gallery, tmp_path: Path) -> None:
    out, dataset, store = gallery
    result = write_gallery(store, tmp_path / "plain.html", options=GalleryOptions(per_class=2, classes_per_page=3))
    page = result.pages[0].read_text(encoding="utf-8")
    assert result.sampled_images == 6 and "<img" not in page and "No --dataset given" in page


def test_pages_split_classes_and_link_to_each_other(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data", counts=(2, 2, 2, 2, 2))
    store = make_store(tmp_path / "captions", dataset, lambda i, p: f"c{i}{p}")
    result = write_gallery(store, tmp_path / "g.html", dataset=dataset, options=GalleryOptions(classes_per_page=2))
    assert [p.name for p in result.pages] == ["g.html", "g-2.html", "g-3.html"]
    pages = [p.read_text(encoding="utf-8") for p in result.pages]
    sections = [re.findall(r'<section id="class-(\d+)">', page) for page in pages]
    assert sections == [["0", "1"], ["2", "3"], ["4"]]
    for page in pages:
        for name in ("g.html", "g-2.html", "g-3.html"):
            assert f'href="{name}"' in page or "<b " in page
    assert 'href="g-3.html#class-4"' in pages[0]  # the class index on page 1


def brute_force_cosine(vectors: np.ndarray, centre: bool) -> float:
    x = vectors.astype(np.float64)
    x = x - x.mean(axis=0) if centre else x
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.mean([unit[i] @ unit[j] for i, j in combinations(range(len(x)), 2)]))


@pytest.mark.parametrize("rows", [2, 3, 37])
def test_mean_pairwise_cosine_equals_the_mean_over_all_pairs(rows: int) -> None:
    rng = np.random.default_rng(rows)
    vectors = (rng.normal(size=(rows, 11)) + 3.0).astype(np.float16)  # anisotropic, like sentence features
    for centre in (False, True):
        assert mean_pairwise_cosine(vectors, centre=centre) == pytest.approx(brute_force_cosine(vectors, centre))
    same = np.repeat(vectors[:1], 5, axis=0)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert mean_pairwise_cosine(same, centre=True) is None  # identical captions: no direction left


@pytest.mark.slow
def test_with_a_feature_store_the_page_shows_distinct_counts_and_both_cosines(tmp_path: Path) -> None:
    from vlmkd.encode.runner import encode_captions

    dataset = make_dataset(tmp_path / "data")
    words = ["red square", "blue circle", "green triangle"]
    store = make_store(tmp_path / "captions", dataset, lambda i, p: f"a {words[i % 3]}" if p == "G" else "same")
    features = encode_captions(store, tmp_path / "features", progress=False)
    result = write_gallery(store, tmp_path / "g.html", dataset=dataset, features=features)
    by_prompt = {d.prompt_id: d for d in result.diversity}
    assert (by_prompt["G"].captions, by_prompt["G"].distinct_captions) == (10, 3)
    assert (by_prompt["T1"].distinct_captions, by_prompt["T1"].mean_cosine_centred) == (1, None)
    g = np.asarray(features.features[:, 0])
    assert by_prompt["G"].mean_cosine == pytest.approx(brute_force_cosine(g, False), abs=1e-6)
    assert by_prompt["G"].mean_cosine_centred == pytest.approx(brute_force_cosine(g, True), abs=1e-6)
    page = result.pages[0].read_text(encoding="utf-8")
    row = f"<td>G</td><td>10</td><td>3 (30.0%)</td><td>{by_prompt['G'].mean_cosine:.3f}</td>"
    assert row + f"<td>{by_prompt['G'].mean_cosine_centred:.3f}</td>" in page
    assert "<td>T1</td><td>10</td><td>1 (10.0%)</td><td>1.000</td><td>n/a</td>" in page


def fake_large_store(root: Path, num_classes: int, per_class: int) -> tuple[ImageList, CaptionStore]:
    """A store of num_classes x per_class images made cheaply: one noisy 256 px JPEG per class (the worst case
    for thumbnail size), hard-linked under every image name of its class, and Parquet shards written directly."""
    rng = np.random.default_rng(0)
    lines = []
    (root / "images").mkdir(parents=True)
    for label in range(num_classes):
        base = root / "images" / f"{label}-0.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(base, quality=90)
        for k in range(per_class):
            if k:
                os.link(base, root / "images" / f"{label}-{k}.jpg")
            lines.append(f"images/{label}-{k}.jpg {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    dataset = load_image_list(root / "train.txt")
    vocabulary = np.array(["a", "the", "small", "large", "red", "blue", "dog", "cat", "on", "in", "grass", "sky"])
    words = rng.integers(0, len(vocabulary), (len(dataset), 30))  # ~150-character captions, mostly distinct
    captions = [" ".join(vocabulary[row]) for row in words]
    store = CaptionStore.create(
        root / "captions",
        make_manifest(
            dataset_fingerprint=dataset.fingerprint(), num_images=len(dataset),
            prompt_set=prompt_set_record("test", PROMPTS), engine="test", model_id="fake", num_shards=8,
        ),
    )  # fmt: skip
    for shard in range(store.num_shards):
        rows = [
            (i, dataset.samples[i].path, p, f"{p} {captions[i]}") for i in store.shard_range(shard) for p in PROMPTS
        ]
        store.write_shard(shard, rows)
    return dataset, store


@pytest.mark.slow
def test_a_100k_image_store_gives_small_pages(tmp_path: Path, capsys) -> None:
    dataset, store = fake_large_store(tmp_path, num_classes=200, per_class=500)
    out = tmp_path / "site" / "gallery.html"
    assert run_command("caption-info", [str(store.path), "--html", str(out), "--dataset", str(dataset.source)]) == 0
    printed = capsys.readouterr().out
    pages = sorted(out.parent.glob("*.html"))
    sizes = [page.stat().st_size for page in pages]
    assert len(pages) == 8  # 200 classes, 25 per page
    assert max(sizes) < 1_500_000, sizes  # 100 images per page, worst-case (noise) thumbnails
    assert f"800 images on 8 page(s), {sum(sizes):,} bytes" in printed


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    profile = cwd / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, check=True)


@requires_chromium
@pytest.mark.slow
def test_chromium_renders_the_gallery_with_images_and_the_script_caption_as_text(gallery, tmp_path: Path) -> None:
    out, dataset, store = gallery
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri(), cwd=tmp_path)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # not a blank page
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    assert (spread > 80).mean() > 0.01  # vivid thumbnails rendered (the text is grey on white)

    dom = chromium("--dump-dom", out.as_uri(), cwd=tmp_path).stdout
    assert "xssmarker" not in dom and "owned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert "&lt;script&gt;document.title='owned'" in dom  # the caption is there, as text
    assert "<script" not in dom.lower()
    assert dom.count('<img src="data:image/') == 8
    assert dom.count("&lt;script&gt;document.title='owned'") == 4  # class 0's four sampled images
