"""The package version (level 0: importable from anywhere without importing the package facade)."""

__version__ = "0.1.0"
