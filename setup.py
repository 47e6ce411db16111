"""Build configuration beyond pyproject.toml: the wheel carries the repository's conf/ (the one copy
in git, which users edit) as the package data lrnn_lightning/conf, read by the console scripts."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["lrnn_lightning*", "triton_kernels*", "hydra_plugins*"]),
              "lrnn_lightning.conf"],
    package_dir={"lrnn_lightning.conf": "conf"},
    package_data={"lrnn_lightning.conf": ["*.yaml", "**/*.yaml"]},
)
