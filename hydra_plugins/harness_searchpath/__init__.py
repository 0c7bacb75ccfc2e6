"""Hydra search-path plugin: lets installed plugin packages ship their own config files."""
