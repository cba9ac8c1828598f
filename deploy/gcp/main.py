"""Cloud Functions (2nd gen) entry points: deploy the receiver with `--entry-point handler`
and its scheduled sweep, as a second function, with `--entry-point sweep`.

Cloud Functions loads `main.py` from the source root; the handlers live in the package.
"""

from receiver.hosts.gcp_functions import handler, sweep

__all__ = ["handler", "sweep"]
