"""Label-relevant shape attributes of a handwritten digit, measured from its pixels, shared across classes.

What a person (or a good VLM) would say about a digit's shape: how many closed loops it has and where they
sit, its free stroke ends and where they point, long vertical strokes, horizontal bars and where they sit,
and the sides on which the outline opens. Every attribute is shared by several digits (a loop at the bottom:
six, eight, sometimes two; a bar at the top: five, seven; open on the left: three, five...), so captions built
from them name the class and also what a tail class has in common with head classes: the hard case for
a text term on a long tail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from vlmkd.data import ImageList

INK = 0.5  # a pixel is ink above this intensity (0..1)
MIN_LOOP = 3  # pixels of enclosed background that make a loop
MIN_BAY = 6  # pixels of a concavity that make an opening
POSITIONS = ("top", "middle", "bottom")
SIDES = ("left", "right", "top", "bottom")
COLUMNS = ("left", "centre", "right")
FEATURE_NAMES = (
    "loops", "loop_top", "loop_middle", "loop_bottom", "big_loop", "ends",
    *(f"end_{row}_{column}" for row in POSITIONS for column in COLUMNS),
    "vertical", "bar_top", "bar_middle", "bar_bottom",
    "open_left", "open_right", "open_top", "open_bottom", "narrow", "wide",
)  # fmt: skip

_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # P2..P9, clockwise


def thin(ink: np.ndarray, max_iterations: int = 40) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image (H, W) to one-pixel-wide strokes."""
    image = np.pad(ink.astype(np.uint8), 1)
    for _ in range(max_iterations):
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(image, -dr, 0), -dc, 1) for dr, dc in _NEIGHBOURS]
            count = sum(p)
            transitions = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.uint8) for k in range(8))
            if step == 0:
                c1, c2 = p[0] * p[2] * p[4], p[2] * p[4] * p[6]
            else:
                c1, c2 = p[0] * p[2] * p[6], p[0] * p[4] * p[6]
            remove = (image == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & (c1 == 0) & (c2 == 0)
            if remove.any():
                image[remove] = 0
                changed = True
        if not changed:
            break
    return image[1:-1, 1:-1].astype(bool)


def _where(value: float, low: float, high: float) -> int:
    """0/1/2: the third of [low, high] that `value` falls in."""
    third = (high - low) / 3 or 1.0
    return int(np.clip((value - low) // third, 0, 2))


def shape_features(pixels: np.ndarray) -> np.ndarray:
    """The FEATURE_NAMES of one digit (H, W) in [0, 1], as float32: counts, positions and flags."""
    ink = deskew(pixels) > INK
    features = dict.fromkeys(FEATURE_NAMES, 0.0)
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        return np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    features["narrow"] = float(width < 0.5 * height)
    features["wide"] = float(width > 0.9 * height)
    # loops: background regions that do not reach the border
    background, count = ndimage.label(~ink)
    border = set(np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])))
    loops = [k for k in range(1, count + 1) if k not in border and (background == k).sum() >= MIN_LOOP]
    features["loops"] = float(len(loops))
    holes = np.zeros_like(ink)
    for k in loops:
        holes |= background == k
        centre = ndimage.center_of_mass(background == k)[0]
        features[f"loop_{POSITIONS[_where(centre, top, bottom + 1)]}"] = 1.0
        if (background == k).sum() >= 0.2 * height * width:
            features["big_loop"] = 1.0
    # free ends of the thinned strokes, and where they sit
    skeleton = thin(ink)
    padded = np.pad(skeleton, 1).astype(np.uint8)
    neighbours = sum(np.roll(np.roll(padded, -dr, 0), -dc, 1) for dr, dc in _NEIGHBOURS)[1:-1, 1:-1]
    end_rows, end_cols = np.nonzero(skeleton & (neighbours == 1))
    features["ends"] = float(end_rows.size)
    for r, c in zip(end_rows, end_cols, strict=True):
        features[f"end_{POSITIONS[_where(r, top, bottom + 1)]}_{COLUMNS[_where(c, left, right + 1)]}"] = 1.0
    # long straight strokes of the thinned digit: a vertical one spans most of its height, a bar half its width
    features["vertical"] = float(max(_longest_run(skeleton[:, c]) for c in range(ink.shape[1])) >= 0.6 * height)
    for r in range(top, bottom + 1):
        if _longest_run(skeleton[r]) >= max(0.5 * width, 0.25 * height):
            features[f"bar_{POSITIONS[_where(r, top, bottom + 1)]}"] = 1.0
    # openings: concavities of the outline (background inside the convex hull, not a loop), by the side they face
    bays, count = ndimage.label(_hull(ink) & ~ink & ~holes)
    centre_row, centre_col = rows.mean(), cols.mean()
    for k in range(1, count + 1):
        members = np.argwhere(bays == k)
        if len(members) < MIN_BAY:
            continue
        dr, dc = members.mean(axis=0) - (centre_row, centre_col)
        if abs(dc) / width >= abs(dr) / height:
            features["open_right" if dc > 0 else "open_left"] = 1.0
        else:
            features["open_bottom" if dr > 0 else "open_top"] = 1.0
    return np.array([features[name] for name in FEATURE_NAMES], dtype=np.float32)


def deskew(pixels: np.ndarray) -> np.ndarray:
    """The digit sheared upright about its centre of mass (second moments), as MNIST is usually deskewed."""
    rows, cols = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    mass = pixels.sum() + 1e-9
    r0, c0 = (pixels * rows).sum() / mass, (pixels * cols).sum() / mass
    mu11 = (pixels * (rows - r0) * (cols - c0)).sum() / mass
    mu02 = (pixels * (rows - r0) ** 2).sum() / mass
    shear = mu11 / max(mu02, 1e-9)  # column shift per row
    matrix = np.array([[1.0, 0.0], [shear, 1.0]])  # output (r, c) reads input (r, c + shear * r) ...
    offset = np.array([r0, c0]) - matrix @ np.array([r0, c0])  # ... about the centre of mass
    return ndimage.affine_transform(pixels, matrix, offset=offset, order=1)


def _longest_run(line: np.ndarray) -> int:
    best = run = 0
    for value in line:
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def _hull(ink: np.ndarray) -> np.ndarray:
    """Pixels inside the convex hull of the ink's pixel centres."""
    points = np.argwhere(ink).astype(np.float64)
    try:
        hull = Delaunay(points[ConvexHull(points).vertices])
    except (QhullError, ValueError):  # a line or a dot has no 2-D hull
        return ink.copy()
    grid = np.argwhere(np.ones_like(ink)).astype(np.float64)
    return (hull.find_simplex(grid) >= 0).reshape(ink.shape)


def shape_table(pixels: np.ndarray) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) features of every digit in `pixels` (N, H, W)."""
    return np.stack([shape_features(image) for image in pixels])


# --- the words: each attribute as a phrase, and four paraphrase templates that name the digit ---

_COUNT = ("no", "one", "two", "three", "four", "five")


def _plural(count: int, noun: str) -> str:
    return f"{_COUNT[min(count, 5)]} {noun}{'' if count == 1 else 's'}"


def shape_phrases(values: np.ndarray) -> dict[str, str]:
    """The attributes of one digit (a row of `shape_table`) in words: loops, ends, strokes, openings, build."""
    f = dict(zip(FEATURE_NAMES, values.tolist(), strict=True))
    loops = int(f["loops"])
    where = [p for p in POSITIONS if f[f"loop_{p}"]]
    if loops == 0:
        loop_words = "no closed loop"
    elif f["big_loop"] and loops == 1:
        loop_words = "one large round loop"
    elif loops == 2 and where == ["top", "bottom"]:
        loop_words = "two closed loops, one above the other"
    else:
        loop_words = f"{_plural(loops, 'closed loop')} at the {' and '.join(where)}"
    ends = int(f["ends"])
    places = [f"{row} {column}" if column != "centre" else row for row in POSITIONS for column in COLUMNS
              if f[f"end_{row}_{column}"]]  # fmt: skip
    end_words = "no free stroke end" if ends == 0 else f"{_plural(ends, 'free stroke end')} ({', '.join(places)})"
    strokes = (["a long vertical stroke"] if f["vertical"] else []) + [
        f"a horizontal bar at the {p}" for p in POSITIONS if f[f"bar_{p}"]
    ]
    stroke_words = " and ".join(strokes) if strokes else "no straight stroke"
    openings = [side for side in SIDES if f[f"open_{side}"]]
    sides = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
    opening_words = f"open {' and '.join(sides[s] for s in openings)}" if openings else "closed all round"
    build = "narrow and tall" if f["narrow"] else ("wide and round" if f["wide"] else "of ordinary width")
    return {"loops": loop_words, "ends": end_words, "strokes": stroke_words, "openings": opening_words,
            "build": build}  # fmt: skip


SHAPE_TEMPLATES = (
    "a handwritten {digit} with {loops}, {ends}, {strokes}; the outline is {openings} and {build}",
    "This picture shows the number {digit} written by hand in white on black. It has {loops} and {ends}. "
    "It is drawn with {strokes}, and its shape is {openings}.",
    "{build}, {openings}, with {strokes}: {a_digit} in handwriting, {loops}, {ends}",
    "the digit {digit}, handwritten: {ends}; {loops}; {strokes}; {openings}; {build}",
)


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeio' else 'a'} {word}"


def shape_captions(table: np.ndarray, digits: list[str]) -> list[list[str]]:
    """captions[i][p]: digit i's shape attributes (row i of `shape_table`) under template p, naming `digits[i]`."""
    return [
        [template.format(digit=digit, a_digit=_article(digit), **shape_phrases(row)) for template in SHAPE_TEMPLATES]
        for row, digit in zip(table, digits, strict=True)
    ]


def write_shape_caption_file(dataset: ImageList, path: Path) -> Path:
    """A JSONL caption file (image_index, prompt_id S1-S4, caption) of every image's shape attributes."""
    from experiments.attributes import load_pixels

    digits = [dataset.classnames[label].removeprefix("digit ") for label in dataset.labels().tolist()]
    captions = shape_captions(shape_table(load_pixels(dataset)), digits)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index, texts in enumerate(captions):
            for prompt, text in enumerate(texts):
                handle.write(json.dumps({"image_index": index, "prompt_id": f"S{prompt + 1}", "caption": text}) + "\n")
    return path


def import_shape_captions(dataset: ImageList, out: Path) -> Path:
    """The label-relevant captions' store at `out`, imported with `vlmkd caption import` (a rerun reuses it)."""
    from vlmkd.caption.transfer import import_captions

    source = write_shape_caption_file(dataset, out.with_name(out.name + ".jsonl"))
    return import_captions(source, dataset, out, progress=False).store.path


def attribute_probe(train: ImageList, test: ImageList, few_threshold: int = 20) -> dict[str, float]:
    """How much the captions' attributes alone say about the class: top-1 (%) on Few and All of a class-balanced
    logistic regression on `shape_table` features, fitted on the (long-tailed) training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from experiments.attributes import load_pixels

    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    model.fit(shape_table(load_pixels(train)), train.labels())
    predicted, labels = model.predict(shape_table(load_pixels(test))), test.labels()
    few = np.flatnonzero(np.asarray(train.class_counts()) < few_threshold)
    in_few = np.isin(labels, few)
    return {
        "few": 100.0 * float((predicted[in_few] == labels[in_few]).mean()),
        "all": 100.0 * float((predicted == labels).mean()),
    }
