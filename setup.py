"""Dataflow ships this code to workers with ``--setup_file ./setup.py`` (an sdist built from it).

The metadata (name, version, packages, dependencies, the ``viewcounts`` command) is in
``pyproject.toml``; setuptools reads it from there.
"""

from setuptools import setup

setup()
