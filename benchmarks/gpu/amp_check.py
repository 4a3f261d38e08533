"""Teacher-forced AMP check of the fused VLM-KD loss on a GPU: each backend against the reference, step by step.

A ResNet-32 + VLM-KD objective trains a few SGD steps under autocast (bf16 or fp16). At every step the loss and
the gradients of the backbone and the adaptor are computed twice from the same weights and batch, once with
the fused backend and once with the reference; the step is then taken with the fused gradients. Comparing from
the same state (not two free runs) matters: this recipe amplifies float noise, so free runs diverge even when
every step agrees. Also writes a tiny list-file dataset and a feature store for the `vlmkd-train` smoke runs.

    python benchmarks/gpu/amp_check.py --out $OUT/amp           # on a GPU
    python benchmarks/gpu/amp_check.py --dry-run                # anywhere: builds the data, checks nothing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from _common import benchmark_parser, write_image_dataset  # noqa: E402

from vlmkd.data import load_image_list
from vlmkd.encode.store import FORMAT, VERSION
from vlmkd.encode.writer import FeatureWriter
from vlmkd.losses import TaskLoss, VlmkdContrastiveLoss, VlmkdObjective
from vlmkd.models import ModelSpec, build_model

CLASSES, PER_CLASS, SIZE, TEXT_DIM, STEPS, BATCH = 4, 24, 32, 384, 6, 32
# Worst relative error allowed per step, against the reference under the same autocast: both round the same
# low-precision inputs, so they should agree to float32 accumulation noise, far inside the low-precision step.
TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3}


def make_data(root: Path) -> tuple[Path, Path]:
    """A list-file dataset of CLASSES x PER_CLASS noisy colour patches and a feature store whose caption
    features are a class direction plus noise (something the term can learn)."""

    def patch(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
        """Grey level 60 x label plus noise (label = index % CLASSES)."""
        base = np.zeros((size, size, 3)) + 60 * (index % CLASSES)
        return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)

    classnames = [f"class{c}" for c in range(CLASSES)]
    dataset = write_image_dataset(
        root, CLASSES * PER_CLASS, size=SIZE, classes=CLASSES, pixels=patch, classnames=classnames
    )
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((CLASSES, TEXT_DIM))
    values = directions[dataset.labels()][:, None, :] + 0.3 * rng.standard_normal((len(dataset), 1, TEXT_DIM))
    manifest = {
        "format": FORMAT, "version": VERSION, "encoder": "synthetic", "encoder_dtype": "float32", "dim": TEXT_DIM,
        "normalized": False, "dtype": "float16", "prompt_ids": ["G"], "num_images": len(dataset),
        "dataset_fingerprint": dataset.fingerprint(), "caption_store_fingerprint": "synthetic",
    }  # fmt: skip
    writer = FeatureWriter(root / "features", manifest)
    for chunk in writer.pending:
        rows = writer.chunk_rows(chunk)
        writer.write(chunk, values[rows.start : rows.stop].astype(np.float32))
    writer.finish()
    return root / "train.txt", root / "features"


def check(
    backend: str, amp: str, features: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, device: str
) -> dict:
    """Per-step loss and gradient errors of `backend` against the reference under autocast `amp`."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    model = build_model(ModelSpec("resnet32", CLASSES, width=0.5)).to(device)
    contrastive = VlmkdContrastiveLoss(TEXT_DIM, model.feature_dim, backend=backend)
    counts = torch.full((CLASSES,), float(PER_CLASS))
    objective = VlmkdObjective(TaskLoss("balanced_softmax", counts), contrastive, vlmkd_weight=1.0).to(device)
    parameters = [*model.parameters(), *objective.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9)
    steps = []
    for step in range(STEPS):
        picked = torch.randperm(len(labels), generator=torch.Generator().manual_seed(step))[:BATCH]
        x, y, t = images[picked].to(device), labels[picked].to(device), features[picked].to(device)
        results = {}
        for name in (backend, "reference"):
            contrastive.backend = name
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype):
                logits, feats = model(x, return_features=True)
                parts = objective(logits, feats, y, text=t)
            parts["loss"].backward()
            grads = torch.cat([p.grad.detach().float().flatten() for p in parameters if p.grad is not None])
            results[name] = (parts["vlmkd_loss"].item(), grads.clone())
        (fused_loss, fused_grads), (ref_loss, ref_grads) = results[backend], results["reference"]
        grad_error = ((fused_grads - ref_grads).norm() / ref_grads.norm()).item()
        steps.append({"step": step, "vlmkd_fused": fused_loss, "vlmkd_ref": ref_loss, "grad_rel_error": grad_error})
        contrastive.backend = backend
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            logits, feats = model(x, return_features=True)
            objective(logits, feats, y, text=t)["loss"].backward()
        optimizer.step()
    worst_loss = max(abs(s["vlmkd_fused"] - s["vlmkd_ref"]) / abs(s["vlmkd_ref"]) for s in steps)
    worst_grad = max(s["grad_rel_error"] for s in steps)
    ok = worst_loss <= TOLERANCE[amp] and worst_grad <= TOLERANCE[amp]
    return {"backend": backend, "amp": amp, "ok": ok, "worst_loss_rel": worst_loss, "worst_grad_rel": worst_grad}


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--out", type=Path, default=Path("amp-check"), help="folder for data and amp_check.json")
    parser.add_argument("--dry-run", action="store_true", help="build the data only (no GPU needed)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the check itself")
    parser.add_argument("--backends", nargs="+", default=["cuda", "triton"], help="fused backends to check")
    args = parser.parse_args()
    train_list, feature_store = make_data(args.out / "data")
    print(f"data: {train_list}, features: {feature_store}")
    if args.dry_run:
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("amp_check: no CUDA device", file=sys.stderr)
        return 2
    from vlmkd.data.images import load_rgb

    dataset = load_image_list(train_list)
    mean, std = torch.tensor([0.5, 0.5, 0.5])[:, None, None], torch.tensor([0.25, 0.25, 0.25])[:, None, None]
    images = torch.stack(
        [(torch.from_numpy(np.array(load_rgb(dataset.path(i)))).permute(2, 0, 1) / 255 - mean) / std
         for i in range(len(dataset))]
    )  # fmt: skip
    labels = torch.from_numpy(dataset.labels())
    from vlmkd.encode.store import FeatureStore

    features = torch.from_numpy(FeatureStore.open(feature_store).features[:, 0].astype(np.float32))
    reports = [check(b, amp, features, labels, images, args.device) for b in args.backends for amp in ("bf16", "fp16")]
    for report in reports:
        print(json.dumps(report))
    (args.out / "amp_check.json").write_text(json.dumps(reports, indent=1))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
