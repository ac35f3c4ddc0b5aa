"""Where the Hydra configs live, installed or not.

A wheel ships them inside the package (``nervus_lightning/conf``); an editable install or a source
checkout uses the repository's top-level ``conf/``.
"""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"nervus_lightning's config folder was not found next to {here} nor in the source tree; "
        "reinstall the package."
    )
