"""``python -m nervus_lightning.export``; the library function is
:func:`nervus_lightning.workflows.export.export_model`."""

from nervus_lightning.cli.export import main

if __name__ == "__main__":
    main()
