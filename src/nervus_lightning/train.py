"""``python -m nervus_lightning.train``, as ``python -m nervus_lightning``; the library function is
:func:`nervus_lightning.workflows.train.train`."""

from nervus_lightning.cli.train import main

if __name__ == "__main__":
    main()
