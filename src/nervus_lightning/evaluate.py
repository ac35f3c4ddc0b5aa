"""``python -m nervus_lightning.evaluate``; the library function is
:func:`nervus_lightning.workflows.evaluate.evaluate_run`."""

from nervus_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
