"""Moved to `receiver.hosts.gcp_functions`; kept so existing deployments keep working."""

from receiver.hosts.gcp_functions import handler, sweep

__all__ = ["handler", "sweep"]
