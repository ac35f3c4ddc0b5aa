"""nervus_lightning: Nervus rebuilt on PyTorch Lightning and Hydra.

Classification, regression and survival (DeepSurv) models on medical images, clinical tables or
both. The main objects work without Hydra:

    from nervus_lightning import NervusDataModule, NervusModule

The Lightning objects are imported on first use, so that the plain network
(:class:`NervusNet`, :func:`nervus_lightning.models.build.build_net`) and the data contract
load without Lightning.

The commands as functions of plain arguments live in :mod:`nervus_lightning.workflows`
(``from nervus_lightning.workflows.train import train``; ``nervus_lightning.train``,
``.predict`` ... are the ``python -m`` entry points, so the functions are not re-exported here
under those names).
"""

from typing import Any

from nervus_lightning.data.schema import DataSchema, LabelSpec
from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.net import NervusNet

__version__ = "0.1.0"

__all__ = [
    "DataSchema",
    "LabelSpec",
    "NervusDataModule",
    "NervusInputError",
    "NervusModule",
    "NervusNet",
]


def __getattr__(name: str) -> Any:
    # PEP 562: ``from nervus_lightning import NervusModule`` imports Lightning only then.
    if name == "NervusDataModule":
        from nervus_lightning.data.datamodule import NervusDataModule

        return NervusDataModule
    if name == "NervusModule":
        from nervus_lightning.module import NervusModule

        return NervusModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
