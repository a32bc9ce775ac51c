"""Packaging beyond pyproject.toml: the top-level ``hub_configs/`` ships inside the wheel as
``gan_rewrite/hub_configs/`` (pyproject's ``packages.find`` cannot map a folder outside the package)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gan_rewrite", "gan_rewrite.*"]), "gan_rewrite.hub_configs"],
    package_dir={"gan_rewrite.hub_configs": "hub_configs"},
)
