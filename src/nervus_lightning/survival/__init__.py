"""Survival analysis building blocks: Cox loss (``loss``), Breslow baseline (``baseline``), the
training-split aggregates a checkpoint keeps (``reference``), censoring-weighted statistics with
the evaluated set's own censoring curve (``ipcw``), the metrics of a split (``metrics``),
figures (``plots``) and bundled clinical data sets (``presets``). Import from the submodules;
this package imports nothing heavy on its own."""
