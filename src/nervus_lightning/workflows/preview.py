"""``python -m nervus_lightning.preview data.csv=PATH [split=train] [n=16]``: the network's inputs.

The library function is :func:`nervus_lightning.data.preview.write_preview`; the command line
lives in :mod:`nervus_lightning.cli.preview`.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command line lives in nervus_lightning.cli
    from nervus_lightning.cli.preview import main

    main()
