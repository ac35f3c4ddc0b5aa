"""Competing risks with DeepHit (label_<name> = 0 censored / 1..K cause): pycox's loss on the
same batch, CIFs that add up with the event-free survival, Wolbers' cause-specific C against
scikit-survival and a pair count, the cause-specific Brier score against scikit-survival (one
cause), the Aalen-Johansen estimate and a loop, end to end with predict from the checkpoint alone,
bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, assert_loss_sees_the_global_batch, compose_config
from pycox.models.data import pair_rank_mat
from pycox.models.loss import DeepHitLoss, DeepHitSingleLoss, nll_pmf_cr
from pycox.preprocessing.label_transforms import LabTransDiscreteTime
from sklearn.metrics import mean_squared_error
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
)
from sksurv.nonparametric import cumulative_incidence_competing_risks
from sksurv.util import Surv

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import LabelSpec, NervusInputError
from nervus_lightning.survival import competing, discrete, ipcw
from nervus_lightning.survival.metrics import format_time, ipcw_subsample
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks.survival import SurvivalTask
from nervus_lightning.workflows.evaluate import evaluate_run
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train


def _competing_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two causes with exponential times; ``x`` raises cause 1's hazard and lowers cause 2's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t1 = rng.exponential(10 * np.exp(-x))
    t2 = rng.exponential(10 * np.exp(x))
    censor = rng.exponential(20, n)
    time = np.round(np.minimum.reduce([t1, t2, censor]), 2) + 0.01
    cause = np.where(censor < np.minimum(t1, t2), 0, np.where(t1 < t2, 1, 2))
    return time, cause.astype(np.float64), x


def _task(num_durations: int = 6, causes: int = 2) -> SurvivalTask:
    spec = LabelSpec(name="label_death", task="survival", period="period_death", causes=causes)
    return SurvivalTask([spec], model="deephit", num_durations=num_durations, alpha=0.3, sigma=0.5)


def test_loss_equals_pycox_deephit_loss_on_the_same_batch():
    time, cause, _ = _competing_data()
    time = time.astype(np.float32)  # as batches carry it
    task = _task()
    task.fit_before_training(pd.DataFrame({"period_death": time, "label_death": cause}))
    cuts = task.cuts[0]
    assert task.head_size(0) == 2 * 6
    # pycox's competing-risk recipe: its transform on "any event", the cause kept where an
    # event is kept; its DeepHitLoss on (n, causes, m) logits with its pair rank matrix.
    idx, is_event = LabTransDiscreteTime(cuts).transform(time, (cause > 0).astype(float))
    codes = np.where(is_event > 0, cause, 0).astype(np.int64)
    phi = torch.randn(60, 12, generator=torch.Generator().manual_seed(0))
    expected = DeepHitLoss(0.3, 0.5)(
        phi.view(60, 2, 6),
        torch.from_numpy(idx),
        torch.from_numpy(codes),
        torch.from_numpy(pair_rank_mat(idx, codes)),
    )
    batch = {
        "target": torch.tensor(cause).float()[:, None],
        "time": torch.tensor(time).float()[:, None],
    }
    got = task.loss(phi, batch, 0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # A time beyond the last cut (val, test) is censored there, as in pycox's example.
    late_idx, late = competing.discretize_causes(cuts, [cuts[-1] * 2], [2])
    assert late_idx.tolist() == [len(cuts) - 1] and late.tolist() == [0]


def test_unset_loss_weight_is_the_likelihood_alone_with_causes_and_0_2_for_one_event():
    """``task.alpha`` unset (the default, null): competing causes train on pycox's likelihood
    alone (``DeepHitLoss`` with alpha 1), a single-event DeepHit on the paper's 0.2."""
    assert compose_config(["task=survival"]).task.alpha is None
    time, cause, _ = _competing_data()
    spec = LabelSpec(name="label_death", task="survival", period="period_death", causes=2)
    task = SurvivalTask([spec], model="deephit", num_durations=6)
    task.fit_before_training(pd.DataFrame({"period_death": time, "label_death": cause}))
    idx, codes = competing.discretize_causes(task.cuts[0], time, cause)
    phi = torch.randn(60, 12, generator=torch.Generator().manual_seed(2))
    batch = {"target": torch.tensor(cause)[:, None], "time": torch.tensor(time)[:, None]}
    likelihood = nll_pmf_cr(phi.view(60, 2, 6), torch.from_numpy(idx), torch.from_numpy(codes))
    assert task.loss(phi, batch, 0).item() == pytest.approx(likelihood.item(), rel=1e-6)
    cuts = task.cuts[0]
    one_idx, events = discrete.discretize(cuts, time, cause > 0)
    expected = DeepHitSingleLoss(0.2, 0.1)(
        phi[:, :6],
        torch.from_numpy(one_idx),
        torch.from_numpy(events),
        torch.from_numpy(pair_rank_mat(one_idx, events)),
    )
    got = discrete.discrete_loss(
        "deephit", phi[:, :6], cuts, torch.tensor(time), torch.tensor(cause > 0)
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cifs_monotone_in_unit_interval_and_add_up_with_survival():
    task = _task()
    phi = 3 * torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    values = task.transform_output(phi, 0).numpy()
    cif = competing.split_cif(values, 2)
    surv = competing.survival_from_cif(cif)
    assert ((cif >= 0) & (cif <= 1)).all() and (np.diff(cif, axis=2) >= -1e-7).all()
    np.testing.assert_allclose(cif.sum(axis=1) + surv, 1.0, atol=1e-6)
    assert (np.diff(surv, axis=1) <= 1e-7).all()
    # pycox's DeepHit.predict_cif: the softmax over causes x times (+ "beyond the grid").
    pmf = torch.softmax(torch.cat([phi, torch.zeros(40, 1)], dim=1), dim=1)[:, :-1]
    np.testing.assert_allclose(cif, pmf.view(40, 2, 6).cumsum(2).numpy(), atol=1e-6)
    # The per-cause risks (mean CIF over the grid) add up to the event-free risk.
    cuts = np.array([0.0, 1.0, 2.0, 4.0, 7.0, 12.0])
    risks = competing.cause_risks(cif, cuts)
    np.testing.assert_allclose(risks.sum(axis=1), discrete.risk_score(surv, cuts), atol=1e-9)


def test_start_is_the_aalen_johansen_incidence_and_the_likelihood_maximum():
    time, cause, _ = _competing_data(300, seed=4)
    cuts = discrete.fit_grid(time, cause > 0, 8)
    phi = competing.start_logits(cuts, time, cause, 2)
    assert phi.shape == (2 * len(cuts),) and np.isfinite(phi).all()
    cif = competing.split_cif(competing.grid_cif(torch.from_numpy(phi)[None], 2).numpy(), 2)[0]
    # scikit-survival's Aalen-Johansen incidence of the discretised times (pycox's transform:
    # events moved to the next cut, censorings to the previous one), read at the cuts ...
    idx, codes = competing.discretize_causes(cuts, time, cause)
    aj_time, aj = cumulative_incidence_competing_risks(codes, cuts[idx])
    at = np.searchsorted(aj_time, cuts, side="right") - 1
    expected = np.where(at >= 0, aj[1:, np.maximum(at, 0)], 0.0)
    np.testing.assert_allclose(cif, expected, atol=1e-3)
    # ... close to that of the times themselves ...
    raw_time, raw = cumulative_incidence_competing_risks(cause.astype(int), time)
    raw_at = np.searchsorted(raw_time, cuts, side="right") - 1
    np.testing.assert_allclose(cif, np.where(raw_at >= 0, raw[1:, raw_at], 0.0), atol=0.05)
    # ... and the maximum of pycox's competing-risk likelihood without inputs (zero gradient).
    logits = torch.tensor(np.tile(phi, (len(time), 1)).reshape(len(time), 2, -1))
    logits.requires_grad_(True)
    nll_pmf_cr(logits, torch.from_numpy(idx), torch.from_numpy(codes)).backward()
    np.testing.assert_allclose(logits.grad.sum(0).numpy(), 0.0, atol=1e-3)


def _wolbers_by_pairs(time, cause, risk, c):
    """Wolbers' C straight from its definition (scikit-survival's tie conventions)."""
    concordant = comparable = 0.0
    for i in np.flatnonzero(cause == c):
        for j in range(len(time)):
            if j == i:
                continue
            other = cause[j] not in (0, c)
            later = time[j] > time[i] or (time[j] == time[i] and cause[j] == 0)
            if not (other or later):
                continue
            comparable += 1
            if abs(risk[i] - risk[j]) <= 1e-8:
                concordant += 0.5
            elif risk[i] > risk[j]:
                concordant += 1
    return concordant / comparable


def test_wolbers_concordance_equals_scikit_survival_and_a_pair_count():
    time, cause, x = _competing_data(80, seed=2)
    time[:10] = time[10:20]  # tied times
    rng = np.random.default_rng(0)
    for c, risk in ((1, x + rng.normal(0, 1, 80)), (2, np.round(-x, 1))):
        got = competing.cause_concordance(time, cause, risk, c)
        event, moved = competing.wolbers_data(time, cause, c)
        assert got == pytest.approx(concordance_index_censored(event, moved, risk)[0], rel=1e-12)
        assert got == pytest.approx(_wolbers_by_pairs(time, cause, risk, c), rel=1e-12)
    # Censoring the other cause instead gives another number: the comparable sets differ.
    censored = concordance_index_censored(cause == 1, time, x)[0]
    assert competing.cause_concordance(time, cause, x, 1) != pytest.approx(censored)
    assert competing.cause_concordance(time, np.zeros(80), x, 1) is None


def _continuous_competing(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`_competing_data` without rounding: no two times tie."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t1, t2 = rng.exponential(10 * np.exp(-x)), rng.exponential(10 * np.exp(x))
    censor = rng.exponential(20, n)
    time = np.minimum.reduce([t1, t2, censor])
    cause = np.where(censor < np.minimum(t1, t2), 0, np.where(t1 < t2, 1, 2))
    return time, cause, x


def _cause_brier_by_subjects(time, cause, cif, c, times, censoring):
    """The cause-specific Brier score written as a loop over subjects and times."""
    out = []
    for k, t in enumerate(times):
        total = 0.0
        for i in range(time.shape[0]):
            if time[i] <= t and cause[i] != 0:
                total += (float(cause[i] == c) - cif[i, k]) ** 2 / censoring([time[i]])[0]
            elif time[i] > t:
                total += cif[i, k] ** 2 / censoring([t])[0]
        out.append(total / time.shape[0])
    return np.array(out)


def test_cause_brier_score_against_scikit_survival_aalen_johansen_and_a_loop():
    time, cause, x = _continuous_competing(300, seed=4)
    train, test = slice(0, 200), slice(200, 300)
    times = np.quantile(time[test], [0.2, 0.4, 0.6, 0.8])
    rng = np.random.default_rng(1)
    cif = rng.uniform(0, 0.6, size=(300, 2, times.shape[0]))
    censoring = ipcw.CensoringCurve.fit(time[train], cause[train] != 0)
    for c in (1, 2):
        _, got = ipcw.cause_brier_scores(
            time[test], cause[test], cif[test, c - 1], c, times, censoring
        )
        expected = _cause_brier_by_subjects(
            time[test], cause[test], cif[test, c - 1], c, times, censoring
        )
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        integrated = ipcw.integrated_cause_brier_score(
            time[test], cause[test], cif[test, c - 1], c, times, censoring
        )
        assert integrated == pytest.approx(np.trapezoid(got, times) / (times[-1] - times[0]))
    # One cause: scikit-survival's Brier score of the survival 1 - F.
    single = (cause != 0).astype(int)
    y_train = Surv.from_arrays(single[train] != 0, time[train])
    y_test = Surv.from_arrays(single[test] != 0, time[test])
    _, expected = brier_score(y_train, y_test, 1 - cif[test, 0], times)
    curve = ipcw.CensoringCurve.fit(time[train], single[train])
    _, got = ipcw.cause_brier_scores(time[test], single[test], cif[test, 0], 1, times, curve)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Predicting 0 with the censoring curve of the scored cases themselves, the score is the
    # inverse-probability-weighted incidence, which equals the Aalen-Johansen estimate (no ties).
    everyone = ipcw.CensoringCurve.fit(time, cause != 0)
    unique, aalen_johansen = cumulative_incidence_competing_risks(cause, time)
    grid = np.quantile(time, [0.1, 0.3, 0.5, 0.7, 0.9])
    at = np.searchsorted(unique, grid, side="right") - 1
    for c in (1, 2):
        _, got = ipcw.cause_brier_scores(time, cause, np.zeros((300, 5)), c, grid, everyone)
        np.testing.assert_allclose(got, aalen_johansen[c, at], rtol=1e-9)
    # Without censoring every weight is 1: the mean squared error of "cause c by t".
    uncensored = np.where(cause == 0, 1, cause)
    no_censoring = ipcw.CensoringCurve.fit(time, np.ones(300))
    _, got = ipcw.cause_brier_scores(time, uncensored, cif[:, 1], 2, times, no_censoring)
    for k, t in enumerate(times):
        target = (uncensored == 2) & (time <= t)
        assert got[k] == pytest.approx(mean_squared_error(target, cif[:, 1, k]), rel=1e-12)


def _cause_auc_by_pairs(time, cause, marker, c, times, censoring):
    """The cause-specific AUC written as a loop over case-control pairs."""
    out = []
    for k, t in enumerate(times):
        num = den = 0.0
        for i in np.flatnonzero((cause == c) & (time <= t)):
            w_i = 1 / censoring([time[i]])[0]
            for j in range(time.shape[0]):
                if time[j] > t:
                    w_j = 1 / censoring([t])[0]
                elif cause[j] not in (0, c):
                    w_j = 1 / censoring([time[j]])[0]
                else:
                    continue
                den += w_i * w_j
                if abs(marker[i, k] - marker[j, k]) <= 1e-8:
                    num += 0.5 * w_i * w_j
                elif marker[i, k] > marker[j, k]:
                    num += w_i * w_j
        out.append(num / den)
    return np.array(out)


def test_cause_dynamic_auc_against_a_pair_loop_and_scikit_survival():
    time, cause, x = _continuous_competing(240, seed=5)
    train, test = slice(0, 140), slice(140, 240)
    times = np.quantile(time[test], [0.25, 0.5, 0.75])
    rng = np.random.default_rng(2)
    marker = x[:, None] + rng.normal(0, 0.5, size=(240, 3))
    marker[::7] = np.round(marker[::7])  # some tied markers
    censoring = ipcw.CensoringCurve.fit(time[train], cause[train] != 0)
    for c, m in ((1, marker), (2, -marker)):
        got = ipcw.cause_dynamic_auc(time[test], cause[test], m[test], c, times, censoring)
        expected = _cause_auc_by_pairs(time[test], cause[test], m[test], c, times, censoring)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert (got > 0.6).all()  # x raises cause 1 and lowers cause 2
    # One cause: scikit-survival's cumulative/dynamic AUC.
    single = (cause != 0).astype(int)
    y_train = Surv.from_arrays(single[train] != 0, time[train])
    y_test = Surv.from_arrays(single[test] != 0, time[test])
    expected, _ = cumulative_dynamic_auc(y_train, y_test, x[test], times)
    curve = ipcw.CensoringCurve.fit(time[train], single[train])
    got = ipcw.cause_dynamic_auc(time[test], single[test], x[test], 1, times, curve)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Follow-up beyond the training data (whose last time is a failure, so G is undefined
    # after it): the AUCs at times inside it are the same.
    longer = time[test].copy()
    longer[longer > times.max()] += 100.0
    train_cause = cause[train].copy()
    train_cause[np.argmax(time[train])] = 1
    ends_open = ipcw.CensoringCurve.fit(time[train], train_cause != 0)
    with pytest.raises(ValueError, match="undefined after the largest time"):
        ends_open(longer)
    for c, m in ((1, marker), (2, -marker)):
        got = ipcw.cause_dynamic_auc(longer, cause[test], m[test], c, times, ends_open)
        expected = ipcw.cause_dynamic_auc(time[test], cause[test], m[test], c, times, ends_open)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # No cause-2 failure before the first time: undefined there.
    early = np.array([time[test][cause[test] == 2].min() * 0.999, times[1]])
    got = ipcw.cause_dynamic_auc(time[test], cause[test], x[test], 2, early, censoring)
    assert np.isnan(got[0]) and np.isfinite(got[1])


def _cause_uno_by_pairs(time, cause, risk, c, censoring, tau):
    """The censoring-weighted cause-specific C written as a loop over pairs."""
    num = den = 0.0
    for i in np.flatnonzero((cause == c) & (time < tau)):
        g_i = censoring([time[i]])[0]
        for j in range(time.shape[0]):
            later = time[j] > time[i] or (time[j] == time[i] and cause[j] != c)
            if later:
                w = 1 / g_i**2
            elif cause[j] not in (0, c):  # another cause failed first
                w = 1 / (g_i * censoring([time[j]])[0])
            else:
                continue
            den += w
            if abs(risk[i] - risk[j]) <= 1e-8:
                num += 0.5 * w
            elif risk[i] > risk[j]:
                num += w
    return num / den


def test_cause_uno_concordance_against_a_loop_uno_and_wolbers():
    time, cause, x = _competing_data(220, seed=6)  # rounded times: ties
    train, test = slice(0, 120), slice(120, 220)
    risk = np.round(x + np.random.default_rng(3).normal(0, 0.7, 220), 1)
    censoring = ipcw.CensoringCurve.fit(time[train], cause[train] != 0)
    tau = float(np.quantile(time[train], 0.9))
    for c, r in ((1, risk), (2, -risk)):
        got = ipcw.cause_uno_concordance(time[test], cause[test], r[test], c, censoring, tau)
        expected = _cause_uno_by_pairs(time[test], cause[test], r[test], c, censoring, tau)
        assert got == pytest.approx(expected, rel=1e-12)
    # One cause: scikit-survival's Uno C.
    single = (cause != 0).astype(int)
    y_train = Surv.from_arrays(single[train] != 0, time[train])
    y_test = Surv.from_arrays(single[test] != 0, time[test])
    expected = concordance_index_ipcw(y_train, y_test, risk[test], tau)[0]
    curve = ipcw.CensoringCurve.fit(time[train], single[train])
    got = ipcw.cause_uno_concordance(time[test], single[test], risk[test], 1, curve, tau)
    assert got == pytest.approx(expected, rel=1e-12)
    # No censoring and tau beyond every time: Wolbers' C.
    uncensored = np.where(cause == 0, 1, cause)
    no_censoring = ipcw.CensoringCurve.fit(time, np.ones(220))
    for c in (1, 2):
        got = ipcw.cause_uno_concordance(time, uncensored, risk, c, no_censoring, np.inf)
        assert got == pytest.approx(competing.cause_concordance(time, uncensored, risk, c))


def _write_csv(path: Path, n: int = 72, seed: int = 0) -> Path:
    time, cause, x = _competing_data(n, seed)
    rng = np.random.default_rng(seed + 1)
    split = np.array(["train"] * n, dtype=object)
    split[n // 2 : 3 * n // 4] = "val"
    split[3 * n // 4 :] = "test"
    frame = pd.DataFrame(
        {
            "uniqID": [f"case{i:03d}" for i in range(n)],
            "input_x": x,
            "input_noise": rng.normal(size=n),
            "label_death": cause.astype(int),
            "period_death": time,
            "split": split,
        }
    )
    frame.to_csv(path, index=False)
    return path


def _config(csv: Path, model: str = "deephit"):
    overrides = [f"task.model={model}", "task.num_durations=6", "model/extractor=none"]
    return compose_config([f"data.csv={csv}", "task=survival", *FAST, *overrides])


def test_end_to_end_cif_columns_metrics_and_predict_from_checkpoint_alone(tmp_path):
    csv = _write_csv(tmp_path / "cr.csv")
    run = tmp_path / "run"
    train(train_settings(_config(csv)), run)
    pred = pd.read_csv(run / "predictions.csv")
    schema = json.loads((run / "schema.json").read_text())
    spec = schema["labels"][0]
    assert spec["causes"] == 2 and spec["survival_model"] == "deephit"
    # The report's model table says which model, loss and start the head had.
    rows = dict(json.loads((run / "model_summary.json").read_text())["rows"])
    assert rows["model of label_death"] == (
        "DeepHit with 2 competing causes on 6 time cuts; loss: the likelihood alone "
        "(task.alpha unset); started at the training Aalen-Johansen incidences"
    )
    cuts = np.asarray(spec["grid"])
    cif = np.stack(
        [
            pred[[competing.cif_grid_column("label_death", c, k) for k in range(6)]].to_numpy()
            for c in (1, 2)
        ],
        axis=1,
    )
    surv = pred[[discrete.grid_column("label_death", k) for k in range(6)]].to_numpy()
    assert ((cif >= 0) & (cif <= 1)).all() and (np.diff(cif, axis=2) >= -1e-7).all()
    np.testing.assert_allclose(cif.sum(axis=1) + surv, 1.0, atol=1e-6)
    # The head started at the training rows' Aalen-Johansen incidence (competing.start_logits),
    # which one epoch barely moves: on those rows the mean predicted CIF is that estimate (a
    # head started at zero gave every cause 1/13 of the mass in every interval).
    train_rows = (pred.split == "train").to_numpy()
    idx, codes = competing.discretize_causes(
        cuts, pred.period_death[train_rows], pred.label_death[train_rows]
    )
    aj_time, aj = cumulative_incidence_competing_risks(codes, cuts[idx])
    at = np.searchsorted(aj_time, cuts, side="right") - 1
    observed = np.where(at >= 0, aj[1:, np.maximum(at, 0)], 0.0)
    np.testing.assert_allclose(cif[train_rows].mean(axis=0), observed, atol=0.02)
    eval_cols = []
    for c in (1, 2):
        cols = [competing.cif_column("label_death", c, format_time(t)) for t in spec["eval_times"]]
        expected = discrete.interpolate_survival(cif[:, c - 1], cuts, spec["eval_times"])
        np.testing.assert_allclose(pred[cols].to_numpy(), expected, atol=1e-9)
        eval_cols += cols
    risks = competing.cause_risks(cif, cuts)
    np.testing.assert_allclose(pred[["risk_label_death_1", "risk_label_death_2"]], risks, atol=1e-9)
    np.testing.assert_allclose(pred.risk_label_death, discrete.risk_score(surv, cuts), atol=1e-9)
    # Metrics: event-free survival (any cause) as single-event ones, Wolbers' C per cause.
    metrics = json.loads((run / "metrics.json").read_text())["test"]["label_death"]
    test = pred[pred.split == "test"]
    assert metrics["c_index"] == pytest.approx(
        concordance_index_censored(test.label_death != 0, test.period_death, test.risk_label_death)[
            0
        ]
    )
    for c in (1, 2):
        event, moved = competing.wolbers_data(test.period_death, test.label_death, c)
        expected = concordance_index_censored(event, moved, test[f"risk_label_death_{c}"])[0]
        assert metrics[f"c_index_cause{c}"] == pytest.approx(expected)
    # Observed cumulative incidence: scikit-survival's Aalen-Johansen estimate, read at the
    # calibration time; predicted: the mean of the cases' CIFs there.
    t = float(np.median(spec["eval_times"]))
    unique, observed = cumulative_incidence_competing_risks(
        test.label_death.to_numpy(), test.period_death.to_numpy()
    )
    at = np.searchsorted(unique, t, side="right") - 1
    for c in (1, 2):
        assert metrics[f"cif_observed_cause{c}"] == pytest.approx(observed[c, at])
        mean = discrete.interpolate_survival(cif[pred.split == "test", c - 1], cuts, [t]).mean()
        assert metrics[f"cif_predicted_cause{c}"] == pytest.approx(mean)
    # Integrated Brier score of each cause's CIF on the ibs grid, censoring from the evaluated
    # (test) rows' own Kaplan-Meier curve (any cause an event): the direct call on the test
    # rows' interpolated curves.
    reference = SurvivalReference.from_json(spec)
    full_grid = reference.ibs_grid()
    kept = (full_grid >= test.period_death.min()) & (full_grid < test.period_death.max())
    grid = full_grid[kept]
    assert grid.shape[0] >= 2 and grid.max() < reference.max_time
    train_rows = pred[pred.split == "train"]
    censoring = ipcw.CensoringCurve.fit(test.period_death, test.label_death != 0)
    for c in (1, 2):
        curves = discrete.interpolate_survival(cif[pred.split == "test", c - 1], cuts, grid)
        expected = ipcw.integrated_cause_brier_score(
            test.period_death, test.label_death, curves, c, grid, censoring
        )
        assert metrics[f"ibs_cause{c}"] == pytest.approx(expected, rel=1e-9)
        # Cause c's td-AUC at each evaluation time, the marker the predicted CIF there.
        at = np.asarray(spec["eval_times"])
        markers = discrete.interpolate_survival(cif[pred.split == "test", c - 1], cuts, at)
        auc = ipcw.cause_dynamic_auc(test.period_death, test.label_death, markers, c, at, censoring)
        for t, value in zip(at, auc, strict=True):
            assert metrics[f"td_auc_cause{c}_t{format_time(t)}"] == pytest.approx(value)
        # The index of prediction accuracy against the training Aalen-Johansen incidence.
        unique, train_cif = cumulative_incidence_competing_risks(
            train_rows.label_death.to_numpy(), train_rows.period_death.to_numpy()
        )
        # ... at the baseline's stored times (each step >= k events), read linearly between
        # them from 0 at time 0, flat after the last (as the baseline is read).
        stored = reference.baseline.times
        at_stored = np.searchsorted(unique, stored, side="right") - 1
        cif_stored = np.where(at_stored >= 0, train_cif[c, np.maximum(at_stored, 0)], 0.0)
        null = np.interp(full_grid, np.r_[0.0, stored], np.r_[0.0, cif_stored])
        np.testing.assert_allclose(reference.null_cif[c - 1], null, rtol=1e-12)
        null_ibs = ipcw.integrated_cause_brier_score(
            test.period_death, test.label_death, np.tile(null[kept], (len(test), 1)), c, grid,
            censoring,
        )  # fmt: skip
        assert metrics[f"ibs_null_cause{c}"] == pytest.approx(null_ibs, rel=1e-9)
        ipa = 1 - metrics[f"ibs_cause{c}"] / null_ibs
        assert metrics[f"ipa_cause{c}"] == pytest.approx(ipa, rel=1e-9)
        # Cause c's censoring-weighted C of its risk, truncated at Uno's tau.
        tau = min(reference.follow_up_p90, test.period_death.max())
        expected = ipcw.cause_uno_concordance(
            test.period_death, test.label_death, test[f"risk_label_death_{c}"], c, censoring, tau
        )
        assert metrics[f"c_index_uno_cause{c}"] == pytest.approx(expected, rel=1e-12)
    # Above evaluation.max_rows_exact the per-cause IPCW metrics use the seeded subsample of
    # the other IPCW metrics (Wolbers' C still every row), and the notes say so.
    small = evaluate_run(
        run / "predictions.csv", tmp_path / "small", n_bootstrap=0, max_rows_exact=12, seed=3
    )
    small = small[(small.split == "test") & (small.group == "all")].set_index("metric")
    sub = ipcw_subsample(len(test), 12, 3)
    curves = discrete.interpolate_survival(cif[pred.split == "test", 0][sub], cuts, grid)
    sub_censoring = ipcw.CensoringCurve.fit(
        test.period_death.iloc[sub], test.label_death.iloc[sub] != 0
    )
    expected = ipcw.integrated_cause_brier_score(
        test.period_death.iloc[sub], test.label_death.iloc[sub], curves, 1, grid, sub_censoring
    )
    assert small.loc["ibs_cause1", "value"] == pytest.approx(expected, rel=1e-9)
    assert small.loc["c_index_cause1", "value"] == pytest.approx(metrics["c_index_cause1"])
    notes = pd.read_csv(tmp_path / "small" / "metrics_notes.csv")
    noted = notes[(notes.split == "test") & notes.metric.str.startswith("ibs_cause")]
    assert noted.note.str.contains("random subsample of 12").all() and len(noted) == 2
    table = pd.read_csv(run / "evaluation" / "metrics.csv")
    assert {"c_index_cause1", "events_cause2", "cif_observed_cause2"} <= set(table.metric)
    ibs_rows = table[table.metric.str.startswith("ibs_cause")]
    assert len(ibs_rows) >= 2 and ibs_rows.ci_lower.notna().all()
    # The report: event-free metrics in the headline table, each cause's in a table of its own.
    html = (run / "evaluation" / "report.html").read_text()
    headline = html.split("Table 1. label_death: headline")[1].split("Table 1 (per cause)")[0]
    assert "Harrell" in headline and "cause" not in headline
    per_cause = html.split("Table 1 (per cause)")[1].split("</table>")[0]
    assert "Wolbers" in per_cause and "IBS of the CIF" in per_cause and "td-AUC at t" in per_cause
    assert "Uno weights" in per_cause and "IPA" in per_cause and "IPA" in headline
    assert "ibs_null" not in headline + per_cause  # the null model's IBS: full table only
    causes = re.findall(r'<td class="key">(\d)</td>', per_cause)
    assert causes == ["1", "2", "1", "2"]  # test, then val
    assert list((run / "evaluation").rglob("cumulative_incidence.png"))
    # The checkpoint alone reproduces the CIFs.
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    assert torch.load(ckpt, weights_only=True)["nervus_task_state"]["grid.0"].shape == (6,)
    predict(ckpt, csv, tmp_path / "pred")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    columns = [c for c in pred.columns if c.startswith(("cif_", "surv_", "risk_label"))]
    assert len([c for c in columns if c.startswith("cif_")]) == 2 * (6 + len(spec["eval_times"]))
    np.testing.assert_allclose(again[columns], pred[columns], atol=1e-6)
    assert set(eval_cols) <= set(again.columns)


def _edit(csv: Path, **changes) -> Path:
    frame = pd.read_csv(csv)
    frame["label_death"] = frame["label_death"].astype(float)
    for row, value in changes.items():
        frame.loc[int(row[1:]), "label_death"] = value
    frame.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"r3": 1.5},
            r"'label_death' must be 0 \(censored\) or 1 .*cause 1, 2.*\[1\.5\] at line 5",
        ),
        ({"r4": -1}, r"'label_death' must be 0.*\[-1\] at line 6"),
        ({"r60": 3}, r"cause\(s\) \[3\] at line 62 beyond the training split's causes 1\.\.2"),
    ],
)
def test_bad_cause_codes_are_clear_errors(tmp_path, changes, message):
    csv = _edit(_write_csv(tmp_path / "cr.csv"), **changes)
    with pytest.raises(NervusInputError, match=message):
        train(train_settings(_config(csv)), tmp_path / "run")


def test_a_cause_without_training_events_is_a_clear_error(tmp_path):
    csv = _write_csv(tmp_path / "cr.csv")
    frame = pd.read_csv(csv)
    frame.loc[frame.label_death == 2, "label_death"] = 3  # causes 1 and 3: no cause 2
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError, match=r"cause\(s\) \[2\] have no event in the training"):
        train(train_settings(_config(csv)), tmp_path / "run")


@pytest.mark.parametrize("model", ["cox", "pmf"])
def test_competing_causes_need_deephit(tmp_path, model):
    csv = _write_csv(tmp_path / "cr.csv")
    with pytest.raises(NervusInputError, match=r"label_death.*Set task.model=deephit"):
        train(train_settings(_config(csv, model)), tmp_path / "run")


def test_external_csv_with_an_unknown_cause_is_a_clear_error(tmp_path):
    from nervus_lightning.data.schema import DataSchema, validate_for_prediction
    from nervus_lightning.tasks import SurvivalTask

    csv = _edit(_write_csv(tmp_path / "cr.csv"), r70=5)
    spec = LabelSpec("label_death", "survival", period="period_death", causes=2)
    schema = DataSchema(labels=[spec], input_columns=["input_x", "input_noise"])
    with pytest.raises(NervusInputError, match=r"cause 1\.\.2.*\[5\] at line 72"):
        validate_for_prediction(csv, schema, SurvivalTask)


@pytest.mark.slow
def test_competing_loss_sees_the_global_batch_with_several_processes():
    """Under DDP each process holds half the batch; DeepHit's rank loss must still compare every
    pair (two gloo processes, two causes)."""
    time, cause, _ = _competing_data(20, seed=3)
    task = _task()
    task.fit_before_training(pd.DataFrame({"period_death": time, "label_death": cause}))
    phi = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    time_, cause_ = torch.tensor(time).float()[:, None], torch.tensor(cause).float()[:, None]
    assert_loss_sees_the_global_batch(task, phi, time_, cause_, port=29533)
