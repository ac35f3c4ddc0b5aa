"""``python -m nervus_lightning.preview``; the library function is
:func:`nervus_lightning.workflows.preview.preview`."""

from nervus_lightning.cli.preview import main

if __name__ == "__main__":
    main()
