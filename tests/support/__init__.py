"""Helpers shared by the test suite: child processes (moto, the registry), layout generation,
and the real tools (umoci, skopeo) that build and pull images.

The conftest next to this package puts `tests/` on `sys.path` (pytest's default `prepend`
import mode does so for a rootdir conftest without `__init__.py`), so tests import
`support.layouts` and friends directly.
"""
