"""``python -m nervus_lightning.explain``; the library function is
:func:`nervus_lightning.workflows.explain.explain`."""

from nervus_lightning.cli.explain import main

if __name__ == "__main__":
    main()
