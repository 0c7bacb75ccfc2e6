"""Hydra launcher plugin: the harness's Ray launcher (``hydra/launcher=ray``; needs ``harness[ray]``)."""
