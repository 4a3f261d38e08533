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
