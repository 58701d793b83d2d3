"""Large problems: the user's choice of layout (:class:`ScaleOut`) and the :mod:`._layouts` layout it makes.

Three options lay out the market work of an estimation; each gives the padded path's results (to
rounding) at a different cost, for every model (supply side and micro moments included):

- **devices**: markets split over a device mesh; each device maps its own markets, only the summed
  moment pieces (and the P-vector gradient) cross devices;
- **buckets**: markets grouped into a few (J, I) size classes, one program each, so that small
  markets are not padded to the largest;
- **market_batch_size**: markets processed that many at a time (``lax.map``) and the gradient formed
  in two passes, so that peak memory is O(batch · I · J) instead of O(T · I · J).

``devices`` combines with ``market_batch_size``, and ``buckets`` with ``market_batch_size``;
``devices`` with ``buckets`` is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from .._base import config
from .._base.errors import BLPSpecificationError
from .buckets import Bucketed, market_sizes, plan_buckets
from .devices import Sharded, market_mesh
from .layouts import Layout, Padded


@dataclass(frozen=True)
class ScaleOut:
    """How to lay out the market work of an estimation (all ``None``: one padded vmapped program).

    Args:
        devices: ``None`` (the default device only), an int n (the first n of ``jax.devices()``,
            across all hosts after ``jax.distributed.initialize()``) or a sequence of JAX devices.
            Markets are split over a 1-D mesh of these devices.
        buckets: ``None``, an int (at most that many (J, I) size classes, each its own program to
            compile; fewer when they cost within 2% of the best) or ``"auto"`` (at most
            ``settings.auto_max_buckets``, 8).
        market_batch_size: markets solved (and differentiated) at a time within each bucket or
            device; bounds peak memory by that many markets' I × J arrays.

    Raises:
        BLPSpecificationError: bad values, more devices than JAX sees, or devices with buckets.
    """

    devices: int | tuple | None = None
    buckets: int | str | None = None
    market_batch_size: int | None = None

    def __post_init__(self):
        d, b, n = self.devices, self.buckets, self.market_batch_size
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer, Sequence)) or isinstance(d, str):
                raise BLPSpecificationError(f"devices must be None, an int or a sequence of JAX devices, not {d!r}.")
            if isinstance(d, (int, np.integer)):
                available = jax.device_count()
                if d < 1 or d > available:
                    raise BLPSpecificationError(
                        f"devices={d}, but JAX sees {available} device(s) ({jax.default_backend()}). On CPU, "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={d} (set before importing JAX) makes "
                        "that many host devices; on several hosts call jax.distributed.initialize() first."
                    )
                object.__setattr__(self, "devices", int(d))
            else:
                d = tuple(d)
                if not d or not all(isinstance(x, jax.Device) for x in d):
                    raise BLPSpecificationError("devices must be a non-empty sequence of jax.Device (jax.devices()).")
                if len(set(d)) != len(d):
                    raise BLPSpecificationError("devices lists the same device more than once.")
                object.__setattr__(self, "devices", d)
        if b is not None and b != "auto":
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise BLPSpecificationError(f"buckets must be None, a positive int or 'auto', not {b!r}.")
            object.__setattr__(self, "buckets", int(b))
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise BLPSpecificationError(f"market_batch_size must be None or a positive int, not {n!r}.")
            object.__setattr__(self, "market_batch_size", int(n))
        if self.devices is not None and self.buckets is not None:
            raise BLPSpecificationError(
                "devices and buckets together are not supported: the bucketed programs run on one device. "
                "Use devices (optionally with market_batch_size) to spread markets over devices, or buckets "
                "(optionally with market_batch_size) on one device."
            )

    @property
    def plain(self) -> bool:
        """True when nothing is asked for (the padded single-program path)."""
        return self.devices is None and self.buckets is None and self.market_batch_size is None

    def device_list(self) -> list:
        """The devices of the mesh (``devices`` resolved against ``jax.devices()``)."""
        if self.devices is None:
            return [jax.devices()[0]]
        if isinstance(self.devices, int):
            return jax.devices()[: self.devices]
        return list(self.devices)

    def max_buckets(self) -> int | None:
        return config.settings.auto_max_buckets if self.buckets == "auto" else self.buckets

    def path(self) -> str:
        """A short name of the program: ``padded``, ``sharded``, ``bucketed``, ``chunked``, with ``+chunked``."""
        chunk = "+chunked" if self.market_batch_size is not None else ""
        if self.devices is not None:
            return "sharded" + chunk
        if self.buckets is not None:
            return "bucketed" + chunk
        return "chunked" if chunk else "padded"


def make_layout(scale: ScaleOut, mask, weights) -> Layout:
    """The :mod:`._layouts` layout of ``scale`` for a problem with this (T, J) mask and (T, I) agent weights."""
    batch = scale.market_batch_size
    if scale.devices is not None:
        return Sharded(batch=batch, mesh=market_mesh(scale.device_list()), T=int(np.shape(mask)[0]))
    if scale.buckets is not None:
        plan = plan_buckets(*market_sizes(mask, weights), max_buckets=scale.max_buckets())
        return Bucketed.from_plan(plan, batch)
    return Padded(batch=batch)


__all__ = ["ScaleOut", "make_layout"]
