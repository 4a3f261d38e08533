"""The training loop's steps used one by one (build, restore, train_one_epoch, checkpoint) give what `train` gives;
a run opens its feature store once."""

from __future__ import annotations

import torch
from _cases import make_features, tiny_config
from safetensors.torch import load_file

from vlmkd.encode.store import FeatureStore
from vlmkd.train.distributed import init_distributed
from vlmkd.train.trainer import Progress, build_run, restore, save_epoch_checkpoint, train, train_one_epoch


def test_steps_by_hand_equal_train_and_resume_from_their_checkpoint(tiny_dataset, tmp_path) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "whole", batch_size=4, epochs=2)
    train(config)
    torch.set_num_threads(1)
    by_hand = config.replace(output=tmp_path / "by_hand")
    run = build_run(by_hand, init_distributed("cpu"))
    progress = Progress()
    summary = train_one_epoch(run, 0, progress, log=None)
    assert progress == Progress(epoch=1, step=run.steps_per_epoch, skipped=0) and summary["loss"] > 0
    checkpoint = save_epoch_checkpoint(run, progress)
    # A fresh build restored from that checkpoint finishes the second epoch exactly like the uninterrupted run.
    resumed = build_run(by_hand, init_distributed("cpu"))
    progress = restore(resumed, checkpoint)
    assert progress == Progress(epoch=1, step=run.steps_per_epoch, skipped=0)
    train_one_epoch(resumed, 1, progress, log=None)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, whole[name], rtol=0, atol=0, msg=name)


def test_a_run_opens_its_feature_store_once(tiny_dataset, tmp_path, monkeypatch) -> None:
    features = make_features(tiny_dataset, tmp_path)
    opened = []
    original = FeatureStore.open.__func__

    def counting(cls, path):
        opened.append(path)
        return original(cls, path)

    monkeypatch.setattr(FeatureStore, "open", classmethod(counting))
    train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=4, epochs=2, features=str(features), vlmkd_weight=1.0))
    assert len(opened) == 1, opened


def test_crop_settings_reach_the_training_loader(tiny_dataset, tmp_path) -> None:
    from vlmkd.data.loaders import build_loader

    # A full square crop without flips is the eval view: every training image equals its eval pixels.
    config = tiny_config(tiny_dataset, tmp_path / "run", batch_size=4, flip=False, crop_scale=[1, 1], crop_ratio=[1, 1])
    run = build_run(config, init_distributed("cpu"))
    eval_batches = build_loader(
        tiny_dataset, train=False, batch_size=4, image_size=config.image_size, num_workers=0,
        mean=config.mean, std=config.std,
    )  # fmt: skip
    by_index = {int(i): x for images, _, indices in eval_batches for i, x in zip(indices, images, strict=True)}
    seen = 0
    for images, _, indices in run.loader:
        for i, x in zip(indices.tolist(), images, strict=True):
            torch.testing.assert_close(x, by_index[i], atol=1e-5, rtol=0)
            seen += 1
    assert seen == len(run.loader) * 4
    # The default zooms: some training view differs from its eval pixels.
    zooming = build_run(config.replace(output=tmp_path / "zoom", crop_scale=[0.35, 1.0]), init_distributed("cpu"))
    images, _, indices = next(iter(zooming.loader))
    assert any(not torch.allclose(x, by_index[int(i)], atol=1e-3) for x, i in zip(images, indices, strict=True))
