"""nervus_lightning: Nervus rebuilt on PyTorch Lightning and Hydra.

Classification, regression and survival (DeepSurv) models on medical images, clinical tables or
both. The main objects work without Hydra:

    from nervus_lightning import NervusDataModule, NervusModule
"""

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import DataSchema, LabelSpec, NervusInputError
from nervus_lightning.models.net import NervusNet
from nervus_lightning.module import NervusModule

__version__ = "0.1.0"

__all__ = [
    "DataSchema",
    "LabelSpec",
    "NervusDataModule",
    "NervusInputError",
    "NervusModule",
    "NervusNet",
]
