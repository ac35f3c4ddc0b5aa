"""Survival analysis building blocks: Cox loss (``loss``), Breslow baseline (``baseline``),
scikit-survival metrics (``metrics``), figures (``plots``) and bundled clinical data sets
(``presets``). Import from the submodules; this package imports nothing heavy on its own."""
