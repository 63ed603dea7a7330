"""The package version. ``pyproject.toml`` writes the same number as a literal of its own;
``tests/test_packaging.py`` checks that the two agree."""
__version__ = "0.1.0"
