"""``python -m nervus_lightning.predict``; the library function is
:func:`nervus_lightning.workflows.predict.predict`."""

from nervus_lightning.cli.predict import main

if __name__ == "__main__":
    main()
