"""Packaging glue that pyproject.toml cannot express: ``configs/`` and ``models/`` stay the source
in the repository and are installed as the data-only packages ``pipeline._configs`` and
``pipeline._models`` (a ``package_dir`` mapping, so ``pip install .`` and editable installs both
work). ``pipeline.config.data_path`` finds the files in a checkout and in an installed package.
Everything else (metadata, dependencies, package data globs) is in pyproject.toml."""
from setuptools import find_namespace_packages, setup

DATA_PACKAGES = {"pipeline._configs": "configs", "pipeline._configs.engines": "configs/engines",
                 "pipeline._models": "models"}

setup(
    packages=find_namespace_packages(include=["pipeline*", "engines*", "calibration*"],
                                     exclude=["*__pycache__*"]) + sorted(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
)
