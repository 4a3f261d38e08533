"""`vlmkd caption merge OUT STORE...`: gather the parts of one caption store captioned on several machines.

Each machine captions its share of the shards into a store folder of its own (`RANK=i WORLD_SIZE=N vlmkd
caption ...`, `--shard-index K`, or a multi-node torchrun), with the same dataset, model, prompts, generation
settings and `--num-shards`. Once the folders are copied to one place, merge checks that every part was made
with the same settings (manifests) and that every shard file is a whole shard of them (its footer, rows and
`made_by` provenance), refuses two copies of a shard that differ, copies the shards byte for byte into OUT
(a new store, or one of the parts, or an earlier merge), and reports the shards still missing. Nothing is
written until every check has passed; a shard already in OUT is never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlmkd.arguments import ArgumentParser
from vlmkd.atomic_files import atomic_write
from vlmkd.caption.store import CaptionStore, settings_differences
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.output_lock import holding

MISSING_SHOWN = 20


@dataclass
class MergeReport:
    """What a merge did: the merged store, the shards copied in (by the part they came from), those OUT held
    already, and those no part holds."""

    store: CaptionStore
    copied: dict[int, Path] = field(default_factory=dict)
    already: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def merge_stores(out: str | Path, parts: Sequence[str | Path]) -> MergeReport:
    """Merge the caption stores `parts` into the store `out` (created, or resumed when it holds these settings).

    `InputError` / `StoreMismatchError` naming the part or shard file, with nothing written, when a part was
    made with other settings, a shard file is damaged or another run's, or two copies of a shard differ.
    """
    out = Path(out)
    if not parts:
        raise InputError("caption merge needs at least one store to merge (vlmkd caption merge OUT STORE...)")
    stores = [CaptionStore.open(Path(part)) for part in parts]
    reference = stores[0]
    for store in stores[1:]:
        _check_same_settings(reference, store)
    with holding(out, what="caption store"):  # alone: no captioning process may write it meanwhile
        # OUT: new, or a caption store of these settings (an earlier merge, a part); never anything else
        existing = CaptionStore.open(out) if CaptionStore.check_compatible(out, reference.manifest) else None
        sources = _shard_sources([existing, *stores] if existing is not None else stores)
        store = CaptionStore.create(out, reference.manifest, existing=existing)
        report = MergeReport(store)
        for shard in range(store.num_shards):
            if shard not in sources:
                report.missing.append(shard)
            elif store.shard_path(shard).exists():
                report.already.append(shard)
            else:
                _copy_shard(sources[shard], store.shard_path(shard))
                report.copied[shard] = sources[shard]
        return report


def _check_same_settings(reference: CaptionStore, store: CaptionStore) -> None:
    differences = settings_differences(reference.manifest, store.manifest)
    if differences:
        raise StoreMismatchError(
            f"{store.path}: was captioned with other settings than {reference.path} ({'; '.join(differences[:4])}); "
            "only parts of one store (same dataset, model, prompts, generation settings and --num-shards) merge"
        )


def _shard_sources(stores: Sequence[CaptionStore]) -> dict[int, Path]:
    """Shard -> the file it is copied from: each written shard checked whole, copies of one shard equal."""
    sources: dict[int, Path] = {}
    for store in stores:
        present = [k for k in range(store.num_shards) if store.shard_path(k).exists()]
        for shard, reason in store.damaged_shards(present):
            raise InputError(
                f"{store.shard_path(shard)}: not a whole shard of {store.path} ({reason}); caption it again there "
                "(a rerun of vlmkd caption with the same settings does) or leave that store out of the merge"
            )
        for shard in present:
            path = store.shard_path(shard)
            if shard in sources:
                if not _same_shard(sources[shard], path, store, shard):
                    raise InputError(
                        f"{path}: shard {shard} differs from {sources[shard]} (same settings, other captions: "
                        "sampled, or captioned on other hardware); keep one of the two files and merge again"
                    )
            else:
                sources[shard] = path
    return sources


def _same_shard(first: Path, second: Path, store: CaptionStore, shard: int) -> bool:
    """Whether two files of one shard hold the same rows and failures (byte-identical files do)."""
    if first.read_bytes() == second.read_bytes():
        return True
    import pyarrow.parquet as pq

    from vlmkd.caption import shard_file

    a, b = pq.read_metadata(first), pq.read_metadata(second)
    if shard_file.failures(a) != shard_file.failures(b):
        return False
    return shard_file.read(first, a).equals(shard_file.read(second, b))


def _copy_shard(source: Path, target: Path) -> None:
    """Copy a shard file byte for byte, published atomically and never over a shard already there."""
    with open(source, "rb") as reader, atomic_write(target, replace=False, ignore_dir_errors=True) as writer:
        while block := reader.read(1 << 20):
            writer.write(block)


def main(argv: list[str] | None = None) -> int:
    """`vlmkd caption merge OUT STORE...`."""
    parser = ArgumentParser(
        prog="vlmkd caption merge",
        description="Gather caption stores written on several machines (each with its share of the shards: "
        "RANK=i WORLD_SIZE=N, --shard-index, or a multi-node torchrun; same dataset, model, prompts, generation "
        "settings and --num-shards) into one store. Every part and every shard file is checked first; copies of "
        "a shard that differ are refused; shards already in OUT are kept; the shards still missing are listed.",
    )
    parser.add_argument("out", type=Path, help="the merged caption store (created, or an earlier merge or a part)")
    parser.add_argument("stores", type=Path, nargs="+", metavar="STORE", help="caption store folders to gather")
    args = parser.parse_args(argv)
    report = merge_stores(args.out, args.stores)
    print(merge_summary(report))
    return 0


def merge_summary(report: MergeReport) -> str:
    """What a merge did, in a few lines."""
    store = report.store
    lines = [f"merged into {store.path}: {len(report.copied)} shards copied, {len(report.already)} already there, "
             f"{len(report.missing)} of {store.num_shards} missing"]  # fmt: skip
    by_part: dict[Path, int] = {}
    for source in report.copied.values():
        by_part[source.parent] = by_part.get(source.parent, 0) + 1
    lines += [f"  {count} from {part}" for part, count in by_part.items()]
    if report.missing:
        shown = ", ".join(map(str, report.missing[:MISSING_SHOWN]))
        more = f", ... ({len(report.missing) - MISSING_SHOWN} more)" if len(report.missing) > MISSING_SHOWN else ""
        lines.append(
            f"store incomplete: shards {shown}{more} are in no part; caption them (e.g. vlmkd caption ... "
            f"--num-shards {store.num_shards} --shard-index K, or a rerun on the machine that owns them) and merge "
            "again"
        )
    else:
        lines.append("store complete")
    return "\n".join(lines)
