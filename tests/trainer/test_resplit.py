"""trainer/data/resplit.py: train/val re-split for repeats that resample the data. The folds are
checked against their definition (a partition of train+val, each (group, label) stratum dealt
evenly, the test split untouched, deterministic), batches against item-by-item reads, and a
tiny fit on a re-split validates on the fold's samples. Seconds."""
import numpy as np
import pytest
import torch

from trainer.data import build_datasets
from trainer.data.resplit import fold_of, resplit


@pytest.fixture(scope="module")
def splits(dataset, tmp_path_factory):
    from trainer.config import make_config

    cfg = make_config("fairvision", "race", preset="tiny", data_root=str(dataset("checkpoint")),
                      cache_dir=str(tmp_path_factory.mktemp("cache")))
    return cfg, build_datasets(cfg)


def _ids(ds):
    """(part, item) of every sample: the identity of a pooled sample."""
    return {tuple(r) for r in ds.index.tolist()}


def test_folds_partition_train_and_val_stratified_and_leave_test_alone(splits):
    _cfg, data = splits
    n_pool = len(data["train"]) + len(data["val"])
    vals = []
    for r in range(4):
        out = resplit(data, 4, r)
        assert out["test"] is data["test"]                                  # never touched
        assert len(out["train"]) + len(out["val"]) == n_pool
        assert not _ids(out["train"]) & _ids(out["val"])
        vals.append(_ids(out["val"]))
    assert set().union(*vals) == {(p, i) for p, d in enumerate((data["train"], data["val"])) for i in range(len(d))}
    assert sum(map(len, vals)) == n_pool                                    # each validated once
    # every (group, label) stratum dealt within one sample across the 4 folds
    groups = np.concatenate([data["train"].groups, data["val"].groups])
    labels = np.concatenate([data["train"].labels, data["val"].labels])
    fold = fold_of(groups, labels, 4, 0)
    for g in np.unique(groups):
        for y in (0, 1):
            counts = np.bincount(fold[(groups == g) & (labels == y)], minlength=4)
            assert counts.max() - counts.min() <= 1, (g, y, counts)
    # deterministic; the next round (repeat 4 = fold 0 of partition 1) is another cut
    assert _ids(resplit(data, 4, 1)["val"]) == vals[1]
    assert _ids(resplit(data, 4, 4)["val"]) != vals[0]


def test_batches_equal_items_in_the_order_asked(splits):
    _cfg, data = splits
    val = resplit(data, 3, 2)["val"]
    idx = np.array([5, 0, len(val) - 1, 3, 1])
    batch = val.get_batch(idx)
    for k, i in enumerate(idx):
        item = val[int(i)]
        assert torch.equal(batch["label"][k], item["label"]) and torch.equal(batch["group"][k], item["group"])
        for m in ("slo", "oct"):
            assert torch.equal(batch[m][k], item[m])
            assert bool(batch["present"][m][k]) == bool(item["present"][m])
    assert np.array_equal(batch["label"].numpy(), val.labels[idx])
    assert np.array_equal(batch["group"].numpy(), val.groups[idx])


def test_a_fit_on_a_resplit_validates_on_the_fold(splits, tmp_path):
    """The trainer re-splits itself from the config: its validation split is the fold's samples
    (labels and groups in the fold's order), and the test split is the one given."""
    from trainer.loop import Trainer

    cfg, data = splits
    cfg = cfg.replace(epochs=1, resplit_folds=3, resplit_fold=1, bootstrap=0)
    trainer = Trainer(cfg)
    want = resplit(data, 3, 1)
    assert np.array_equal(trainer.data["val"].labels, want["val"].labels)
    assert np.array_equal(trainer.data["val"].groups, want["val"].groups)
    assert len(trainer.data["test"]) == len(data["test"])
    report = trainer.train_epoch(progress=False)
    assert np.isfinite(report["loss"])


@pytest.mark.parametrize("field, value", [("resplit_folds", 1), ("resplit_folds", -2), ("resplit_fold", -1)])
def test_bad_resplit_values_are_refused_naming_the_field(splits, field, value):
    cfg, _data = splits
    with pytest.raises(ValueError, match=f"{field}={value}"):
        cfg.replace(**{field: value}).validate()
