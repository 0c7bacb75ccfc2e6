"""Package layout: maps the repository's rooms onto import names.

``conf/`` ships as ``harness.conf`` (so a non-editable install composes the same configs) and
``plugins/`` as ``harness_plugins`` (first-party plugins, registered through entry points).
Every sub-package is found automatically.
"""

from setuptools import find_packages, setup

ROOMS = {"harness": "harness", "harness_plugins": "plugins"}

packages, package_dir = [], {"harness.conf": "conf"}
for name, directory in ROOMS.items():
    package_dir[name] = directory
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(directory)]
packages.append("harness.conf")
# Hydra finds plugins in the ``hydra_plugins`` namespace package (no __init__.py there).
packages.append("hydra_plugins.harness_searchpath")
packages.append("hydra_plugins.harness_ray_launcher")

setup(packages=packages, package_dir=package_dir)
