"""Evaluation of predictions: metrics, bootstrap intervals, thresholds, figures, HTML report.

Import from the submodules (``metrics``, ``thresholds``, ``bootstrap``, ``plots``,
``survival_calibration``, ``report``); this package imports nothing itself, so that computing a
few metrics at the end of training does not load matplotlib or the survival stack.
"""
