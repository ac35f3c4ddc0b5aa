"""The library layer: each command as a function of plain arguments (paths, numbers, plain dicts,
dataclasses), never a Hydra config. Import the one you need (nothing heavy is imported here):

* :mod:`.train` -- :func:`~nervus_lightning.workflows.train.train` (fit, test, predict, report),
  told by :class:`~nervus_lightning.workflows.settings.TrainSettings` (:mod:`.settings`);
* :mod:`.predict` -- :func:`~nervus_lightning.workflows.predict.predict`: a checkpoint on a CSV
  (external validation);
* :mod:`.explain` -- :func:`~nervus_lightning.workflows.explain.explain`: Grad-CAM maps and
  per-input attribution of a checkpoint (computed by :mod:`nervus_lightning.models.attribution`);
* :mod:`.export` -- :func:`~nervus_lightning.workflows.export.export_model`: ONNX or
  ``torch.export`` files and their preprocessing contract;
* :mod:`.preview` -- :func:`~nervus_lightning.workflows.preview.preview`: the network's inputs as
  pictures;
* :mod:`.evaluate` -- :func:`~nervus_lightning.workflows.evaluate.evaluate_run`: a run's
  evaluation report rebuilt from its predictions.

The command line (:mod:`nervus_lightning.cli`) turns Hydra configs into these arguments.
"""
