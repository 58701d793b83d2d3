"""Floating-point configuration.

blpjax needs float64: share inversions are solved to 1e-14 and float32 cannot represent that.
Importing :mod:`blpjax` therefore turns on ``jax_enable_x64`` once, at import time, and every
entry point checks that it is still on (a program that turns it off later gets a clear error
rather than silently wrong estimates).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)


def check_x64() -> None:
    """Raise if float64 has been disabled after blpjax was imported."""
    if not jax.config.read("jax_enable_x64"):
        raise RuntimeError(
            "blpjax needs float64 but jax_enable_x64 is off. blpjax turns it on at import; "
            "something turned it off afterwards. Call jax.config.update('jax_enable_x64', True)."
        )
