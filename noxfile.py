"""Developer sessions: ``nox -s tests`` (the README's test command; ``nox -s tests -- -m slow``
the slow-marked tests it leaves out), ``nox -s lint`` and
``nox -s docs`` (the documentation site, warnings as errors)."""

import nox

nox.options.sessions = ["tests", "lint", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", str(session.create_tmp() + "/site"))
