"""Classification and regression losses: the mean over known targets, equal to torch's own
losses on the known cases, with no host synchronisation (no boolean indexing, no Python test on
a tensor), and a zero loss with a zero gradient for a batch where no target is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.tasks.classification import UNKNOWN, ClassificationTask
from nervus_lightning.tasks.regression import RegressionTask


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_is_cross_entropy_over_known_targets(smoothing):
    torch.manual_seed(0)
    task = ClassificationTask([LabelSpec("label_y", "classification", ["a", "b", "c"])], smoothing)
    logits = torch.randn(10, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, UNKNOWN, 1, UNKNOWN, 0, 2, 2, 1])
    got = task.loss(logits, {"target": target[:, None].float()}, 0)
    known = target != UNKNOWN
    want = F.cross_entropy(logits[known], target[known], label_smoothing=smoothing)
    torch.testing.assert_close(got, want)
    # ... and torch's own ignore_index / mean reduction agree too
    torch.testing.assert_close(
        got, F.cross_entropy(logits, target, ignore_index=UNKNOWN, label_smoothing=smoothing)
    )


@pytest.mark.parametrize("loss", ["mse", "mae", "rmse"])
def test_regression_loss_is_the_mean_over_known_targets(loss):
    torch.manual_seed(1)
    task = RegressionTask([LabelSpec("label_v", "regression", mean=2.0, std=3.0)], loss=loss)
    output = torch.randn(8, 1, requires_grad=True)
    target = torch.tensor([1.0, float("nan"), 4.0, 0.5, float("nan"), 7.0, 2.0, -1.0])
    got = task.loss(output, {"target": target[:, None]}, 0)
    known = ~torch.isnan(target)
    pred, true = output[known, 0], (target[known] - 2.0) / 3.0
    want = {
        "mse": F.mse_loss(pred, true),
        "mae": F.l1_loss(pred, true),
        "rmse": F.mse_loss(pred, true).sqrt(),
    }[loss]
    torch.testing.assert_close(got, want)
    got.backward()
    assert torch.isfinite(output.grad).all() and (output.grad[~known] == 0).all()


@pytest.mark.parametrize("task_name", ["classification", "mse", "mae", "rmse"])
def test_a_batch_without_known_targets_gives_zero_and_a_zero_gradient(task_name):
    if task_name == "classification":
        task = ClassificationTask([LabelSpec("label_y", "classification", ["no", "yes"])])
        output = torch.randn(4, 2, requires_grad=True)
        batch = {"target": torch.full((4, 1), float(UNKNOWN))}
    else:
        task = RegressionTask([LabelSpec("label_v", "regression", mean=0.0, std=1.0)], task_name)
        output = torch.randn(4, 1, requires_grad=True)
        batch = {"target": torch.full((4, 1), float("nan"))}
    loss = task.loss(output, batch, 0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(output.grad, torch.zeros_like(output))
