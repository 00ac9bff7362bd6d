"""Sessions on a pool of worker processes or machines, managed by Ray.

:mod:`service.cluster.actor` runs a :class:`~service.hosting.LocalHost` inside one Ray actor per
worker; :mod:`service.cluster.router` is the API side, a :class:`~service.hosting.SessionHost`
that places sessions on the least-loaded worker and routes every later call to the session's
owner.  Ray is imported here only, so the default in-process service never loads it.
See docs/cluster.md.
"""

from service.cluster.router import RayHost, WorkerPool, ray_host

__all__ = ["RayHost", "WorkerPool", "ray_host"]
