"""`vlmkd caption-info STORE --html OUT`: a static caption gallery, to read what the VLM wrote before training.

Self-contained HTML pages (no server, no network, no scripts): a sample of images per class as small
embedded thumbnails, each with every prompt's caption, then the unreadable images, the store's settings and
the caption-diversity figures. Large stores stay small: a fixed sample per class, a fixed number of classes
per page (`OUT`, `OUT-2.html`, ...). Every caption, path and setting is HTML-escaped (captions are untrusted
model output), and a Content-Security-Policy forbids scripts and every load other than embedded images.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmkd.atomic_files import write_bytes_atomic
from vlmkd.caption.store import CaptionStore
from vlmkd.errors import InputError
from vlmkd.folder_kind import refuse_file_unless
from vlmkd.reporting.diversity import PromptDiversity, caption_diversity

if TYPE_CHECKING:
    import pyarrow as pa

    from vlmkd.data.dataset import ImageList
    from vlmkd.encode.store import FeatureStore

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
FAILURES_LISTED = 500
GENERATOR = '<meta name="generator" content="vlmkd caption-info --html">'  # marks a page as a gallery vlmkd wrote
CLASSES_LISTED = 2000


@dataclass(frozen=True)
class GalleryOptions:
    """How much of a store goes on the pages."""

    per_class: int = 4  # sampled images per class
    classes_per_page: int = 25
    thumb_size: int = 96  # longest side of a thumbnail, pixels
    seed: int = 0

    def validate(self) -> GalleryOptions:
        for name in ("per_class", "classes_per_page", "thumb_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        return self


@dataclass(frozen=True)
class Section:
    """One class (or, without a dataset, one plain sample) and its sampled image indices."""

    title: str
    anchor: str
    indices: list[int]
    note: str = ""
    images: int | None = None  # the class's training images


@dataclass
class GalleryResult:
    """The pages written and what they show."""

    pages: list[Path]
    sampled_images: int
    diversity: list[PromptDiversity] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        return sum(page.stat().st_size for page in self.pages)


def write_gallery(
    store: CaptionStore,
    out: Path,
    *,
    dataset: ImageList | None = None,
    features: FeatureStore | None = None,
    options: GalleryOptions | None = None,
) -> GalleryResult:
    """Render the gallery of `store` into `out` (page 1) and `out`-N.html beside it.

    With `dataset` (the one the store was captioned from; checked) images are shown and grouped by class;
    without, a plain sample of captions is shown. With `features` (encoded from this store; checked) the
    diversity table gains the mean pairwise cosine, raw and centred.
    """
    options = (options or GalleryOptions()).validate()
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{out}: the gallery is an HTML file; give a name ending in .html")
    if dataset is not None:
        store.check_dataset(dataset)
    if features is not None:
        features.check_captions(store)
    table = _finished_rows(store)
    failed = store.failed_images()
    diversity = caption_diversity(table, store.prompt_ids, features.features if features is not None else None)
    captioned = np.unique(table["image_index"].to_numpy()) if table.num_rows else np.zeros(0, dtype=np.int64)
    sections = _sections(captioned, dataset, options)
    chunks = [sections[k : k + options.classes_per_page] for k in range(0, len(sections), options.classes_per_page)]
    chunks = chunks or [[]]
    captions = _captions_of(table, [i for section in sections for i in section.indices])
    names = [out.name] + [f"{out.stem}-{k}{out.suffix}" for k in range(2, len(chunks) + 1)]
    for name in names:  # replaces earlier galleries only, never another file
        refuse_file_unless(out.parent / name, is_gallery, what="caption gallery page", flag="--html")
    out.parent.mkdir(parents=True, exist_ok=True)
    overview = _overview(store, features, diversity, failed, dataset)
    if dataset is not None:
        overview += _class_index(names, chunks)
    pages = []
    for number, chunk in enumerate(chunks, 1):
        body = [_nav(names, chunks, number)]
        if number == 1:
            body.append(overview)
        body += [_section(section, captions, store, dataset, options) for section in chunk]
        body.append(_nav(names, chunks, number))
        title = f"Caption gallery of {store.path} (page {number} of {len(chunks)})"
        path = out.parent / names[number - 1]
        write_bytes_atomic(path, _document(title, body, options.thumb_size).encode("utf-8"), durable=False)
        pages.append(path)
    return GalleryResult(pages, sum(len(s.indices) for s in sections), diversity)


# ------------------------------------------------------------------------------------------------ data
def _finished_rows(store: CaptionStore) -> pa.Table:
    """The rows of every finished shard (an unfinished store still shows what it has)."""
    import pyarrow as pa

    missing = set(store.missing_shards())
    tables = [store.read_shard(k) for k in range(store.num_shards) if k not in missing]
    if tables:
        return pa.concat_tables(tables)
    schema = {"image_index": pa.int64(), "image_path": pa.string(), "prompt_id": pa.string(), "caption": pa.string()}
    return pa.table({name: pa.array([], type=kind) for name, kind in schema.items()})


def _sections(captioned: np.ndarray, dataset: ImageList | None, options: GalleryOptions) -> list[Section]:
    """Seeded samples of captioned images: `per_class` per class, or one plain sample without a dataset."""
    rng = np.random.default_rng(options.seed)
    if dataset is None:
        size = min(len(captioned), options.per_class * options.classes_per_page)
        chosen = sorted(rng.choice(captioned, size=size, replace=False).tolist()) if size else []
        note = f"{size} of {len(captioned)} captioned images, drawn at random (seed {options.seed})"
        return [Section("Sample of images", "sample", chosen, note)]
    labels = dataset.labels()
    is_captioned = np.zeros(len(dataset), dtype=bool)
    is_captioned[captioned] = True
    sections = []
    for label, name in enumerate(dataset.classnames):
        members = np.flatnonzero((labels == label) & is_captioned)
        size = min(len(members), options.per_class)
        chosen = sorted(rng.choice(members, size=size, replace=False).tolist()) if size else []
        total = int((labels == label).sum())
        note = f"{total} training images, {len(members)} captioned; {size} shown"
        sections.append(Section(f"{label}: {name}", f"class-{label}", chosen, note, total))
    return sections


def _captions_of(table: pa.Table, indices: Sequence[int]) -> dict[int, list[tuple[str, str, str]]]:
    """(path, prompt id, caption) rows of the given images, in the store's prompt order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not indices:
        return {}
    picked = table.filter(pc.is_in(table["image_index"], value_set=pa.array(sorted(indices), type=pa.int64())))
    rows: dict[int, list[tuple[str, str, str]]] = {}
    for index, path, prompt, caption in zip(*(picked[c].to_pylist() for c in picked.column_names), strict=True):
        rows.setdefault(int(index), []).append((path, prompt, caption))
    return rows


def thumbnail_data_url(path: Path, size: int) -> str:
    """A `data:` URL of the image at `path` shrunk to `size` px (longest side), as PNG or JPEG, the smaller."""
    from PIL import Image

    from vlmkd.data.images import load_rgb

    image = load_rgb(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    encoded = {}
    for kind, settings in (("png", {}), ("jpeg", {"quality": 82})):
        buffer = io.BytesIO()
        image.save(buffer, format=kind.upper(), **settings)
        encoded[kind] = buffer.getvalue()
    kind = min(encoded, key=lambda k: len(encoded[k]))
    return f"data:image/{kind};base64,{base64.b64encode(encoded[kind]).decode('ascii')}"


# ---------------------------------------------------------------------------------------------- markup
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def is_gallery(head: bytes) -> bool:
    """Whether a file starting with `head` is a gallery page vlmkd wrote (pages from before the generator tag
    are known by their title)."""
    return GENERATOR.encode() in head or b"<title>Caption gallery of " in head


def _document(title: str, body: Iterable[str], thumb: int) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            GENERATOR,
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{STYLE.replace('THUMB', str(thumb))}</style>",
            "</head><body>",
            f"<h1>{_e(title)}</h1>",
            *body,
            "</body></html>",
            "",
        ]
    )


def _nav(names: Sequence[str], chunks: Sequence[Sequence[Section]], current: int) -> str:
    if len(names) == 1:
        return ""
    links = []
    for number, (name, chunk) in enumerate(zip(names, chunks, strict=True), 1):
        span = f"{chunk[0].title} … {chunk[-1].title}" if chunk else ""
        if number == current:
            links.append(f'<b title="{_e(span)}">{number}</b>')
        else:
            links.append(f'<a href="{_e(name)}" title="{_e(span)}">{number}</a>')
    return f"<nav>pages: {' '.join(links)}</nav>"


def _class_index(names: Sequence[str], chunks: Sequence[Sequence[Section]]) -> str:
    """Every class with its image counts, linked to its place in the pages (at most CLASSES_LISTED)."""
    links = [
        f'<a href="{_e(name)}#{_e(section.anchor)}">{_e(section.title)}</a> ({section.images})'
        for name, chunk in zip(names, chunks, strict=True)
        for section in chunk
    ]
    more = f" … and {len(links) - CLASSES_LISTED} more (see the page links)" if len(links) > CLASSES_LISTED else ""
    return f'<section><h2>Classes</h2><p class="classes">{" · ".join(links[:CLASSES_LISTED])}{more}</p></section>'


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _overview(
    store: CaptionStore,
    features: FeatureStore | None,
    diversity: Sequence[PromptDiversity],
    failed: Sequence[tuple[int, str, str]],
    dataset: ImageList | None,
) -> str:
    m = store.manifest
    done = store.num_shards - len(store.missing_shards())
    settings: list[tuple[str, Any]] = [
        ("captions", f"{sum(d.captions for d in diversity)} in the written shards"),
        ("fingerprint", store.fingerprint()),
        ("dataset", f"{m['num_images']} images, fingerprint {m['dataset_fingerprint']}"),
        ("engine", m["engine"]),
        ("model", f"{m['model_id']} ({m['model_fingerprint']})"),
        ("generation", ", ".join(f"{k}={v}" for k, v in sorted(m["generation"].items())) or "(none recorded)"),
        ("shards", f"{done} of {store.num_shards} written"),
        ("prompt set", f"{m['prompt_set']['name']} ({m['prompt_set']['fingerprint']})"),
    ]
    settings += [(f"prompt {p['id']}", p["template"]) for p in m["prompt_set"]["prompts"]]
    if features is not None:
        fm = features.manifest
        settings += [
            ("feature store", features.path),
            ("encoder", f"{fm['encoder']} ({fm['encoder_dtype']}), {fm['dim']}-d, normalized={fm['normalized']}"),
        ]
    parts = ["<section><h2>Settings</h2>", _table(settings), "</section>"]
    if dataset is None:
        parts.append('<p class="note">No --dataset given: captions only, no images, no classes.</p>')
    parts += ["<section><h2>Caption diversity</h2>", _diversity_table(diversity, features is not None)]
    parts.append(
        '<p class="note">Distinct: different caption texts among the images. Mean cosine: average similarity '
        "of the caption features of two different images (1 = identical); the centred figure subtracts the "
        "prompt's mean feature first (about 0 when captions vary independently; n/a when all are identical)."
        "</p></section>"
    )
    parts.append(f"<section><h2>Unreadable images ({len(failed)})</h2>")
    if failed:
        parts.append(_table(failed[:FAILURES_LISTED], ("index", "path", "reason")))
        if len(failed) > FAILURES_LISTED:
            more = len(failed) - FAILURES_LISTED
            parts.append(f'<p class="note">… and {more} more: <code>vlmkd caption-info STORE --failed</code></p>')
    else:
        parts.append('<p class="note">none</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _diversity_table(diversity: Sequence[PromptDiversity], with_features: bool) -> str:
    header = ["prompt", "captions", "distinct"]
    if with_features:
        header += ["mean cosine", "mean cosine, centred"]
    rows = []
    for d in diversity:
        share = f"{d.distinct_captions} ({100 * d.distinct_captions / d.captions:.1f}%)" if d.captions else "0"
        row = [d.prompt_id, d.captions, share]
        if with_features:
            row += [_number(d.mean_cosine), _number(d.mean_cosine_centred)]
        rows.append(row)
    return _table(rows, header)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _section(
    section: Section,
    captions: Mapping[int, list[tuple[str, str, str]]],
    store: CaptionStore,
    dataset: ImageList | None,
    options: GalleryOptions,
) -> str:
    cards = []
    for index in section.indices:
        rows = captions.get(index, [])
        path = rows[0][0] if rows else ""
        picture = ""
        if dataset is not None:
            try:
                url = thumbnail_data_url(dataset.path(index), options.thumb_size)
                picture = f'<img src="{url}" alt="image {index}">'
            except InputError as error:
                picture = f'<div class="broken">{_e(error)}</div>'
        order = {prompt: k for k, prompt in enumerate(store.prompt_ids)}
        text = "".join(
            f"<dt>{_e(prompt)}</dt><dd>{_e(caption)}</dd>"
            for _, prompt, caption in sorted(rows, key=lambda r: order.get(r[1], len(order)))
        )
        cards.append(
            f'<figure class="card">{picture}<figcaption><div class="path">[{index}] {_e(path)}</div>'
            f"<dl>{text}</dl></figcaption></figure>"
        )
    note = f'<p class="note">{_e(section.note)}</p>' if section.note else ""
    heading = f'<section id="{_e(section.anchor)}"><h2>{_e(section.title)}</h2>{note}'
    return f'{heading}<div class="grid">{"".join(cards)}</div></section>'


def gallery_summary(result: GalleryResult) -> str:
    """One line per page with its size, for the command line."""
    lines = [f"gallery: {result.sampled_images} images on {len(result.pages)} page(s), {result.bytes_written:,} bytes"]
    lines += [f"  {page} ({page.stat().st_size:,} bytes)" for page in result.pages]
    return "\n".join(lines)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a1a1a; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { white-space: pre-wrap; word-break: break-word; max-width: 60em; }
nav { margin: .8em 0; } nav a, nav b { margin-right: .4em; }
.note { color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }
.card { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fafafa; }
.card img { width: THUMBpx; height: THUMBpx; object-fit: contain; image-rendering: pixelated; background: #eee; }
.broken { width: THUMBpx; height: THUMBpx; background: #fdd; color: #900; font-size: 11px; overflow: hidden; }
.path { font: 12px monospace; color: #555; word-break: break-all; }
dl { margin: .4em 0 0; } dt { font-weight: 600; }
dd { margin: 0 0 .3em 1em; white-space: pre-wrap; word-break: break-word; }
"""
