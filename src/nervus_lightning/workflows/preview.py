"""The network's inputs as pictures: :func:`preview` writes the first cases of a split as the
network gets them (the command line: ``python -m nervus_lightning.preview data.csv=PATH
[split=train] [n=16]``, :mod:`nervus_lightning.cli.preview`).

The pictures themselves are :func:`nervus_lightning.data.preview.write_preview`'s; this module
builds the data as training would, images only (2D images, or volumes with
``data.volume_size``: three orthogonal mid-slices per case).
"""

from __future__ import annotations

from pathlib import Path

from nervus_lightning.data.preview import auto_window_note, write_preview
from nervus_lightning.workflows.settings import TrainSettings
from nervus_lightning.workflows.train import build_datamodule


def preview(
    settings: TrainSettings, out: str | Path, split: str = "train", n: int = 16
) -> list[Path]:
    """Build the data of ``settings`` as training would (images only) and write the preview PNGs.

    Args:
        settings: the training settings whose data is shown (``settings.augmentation`` other
            than ``none`` adds a row of augmented versions; ``settings.seed`` draws them).
        out: the folder written: ``<uniqID>.png`` per case and ``sheet.png``.
        split: the split whose first ``n`` cases are shown.
        n: how many cases.

    Returns:
        The files written: the images and the contact sheet.
    """
    datamodule = build_datamodule(
        # A few images are read once: building the whole data set's image cache would not pay.
        settings,
        use_images=True,
        use_tabular=False,
        sampler="none",
        num_workers=0,
        cache="none",
    )
    written = write_preview(
        datamodule,
        out,
        split=str(split),
        n=int(n),
        augmented=settings.augmentation != "none",
        seed=int(settings.seed),
    )
    print(f"preview of {len(written) - 1} image(s) of split {split} written to {out}/")
    note = auto_window_note(datamodule)
    if note:
        print(note)
    return written
