"""``python -m nervus_lightning``: train, validate and test (:mod:`nervus_lightning.cli.train`)."""

from nervus_lightning.cli.train import main

if __name__ == "__main__":
    main()
