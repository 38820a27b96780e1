"""Guards: a training split smaller than a batch is refused; divergence names epoch, step, term."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import make_config
from trainer.guards import DivergenceError, FiniteWatch, check_predictions
from trainer.loop import Trainer, fit


@pytest.fixture(scope="module")
def root(dataset):
    return dataset("guards")


def _cfg(root, tmp_path, **kw):
    return make_config("fairvision", "gender", preset="tiny", data_root=str(root),
                       cache_dir=str(tmp_path / "cache"), bootstrap=0, **kw)


def test_train_split_smaller_than_a_batch_is_refused(root, tmp_path):
    with pytest.raises(ValueError, match=r"split 'train' has 24 samples, fewer than batch_size=32"):
        Trainer(_cfg(root, tmp_path, batch_size=32))


def test_divergence_names_epoch_step_and_term(root, tmp_path):
    with pytest.raises(DivergenceError, match=r"epoch 1, step \d+ of 3: non-finite loss term"):
        fit(_cfg(root, tmp_path, batch_size=8, epochs=2, mode="baseline", lr=1e6), progress=False)


def test_finite_watch_names_the_first_bad_step_and_term():
    watch = FiniteWatch()
    for step in range(5):
        gm = torch.tensor(float("nan") if step >= 2 else 0.1)
        watch.add({"loss": gm + 1, "task": torch.tensor(0.5), "gm": gm, "scale": torch.ones(2)})
    with pytest.raises(DivergenceError, match=r"epoch 7, step 3 of 5: non-finite loss term\(s\) "
                                              r"gm=nan;"):
        watch.check(7)
    ok = FiniteWatch()
    ok.add({"loss": torch.tensor(1.0)})
    ok.check(1)                                                 # finite: no error
    with pytest.raises(DivergenceError, match=r"split 'val' \(1 of 2\)"):
        check_predictions(np.array([0.2, np.nan]), "val", 3)
