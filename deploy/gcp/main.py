"""Cloud Functions (2nd gen) entry point: deploy with `--entry-point handler`.

Cloud Functions loads `main.py` from the source root; the handler lives in the package.
"""

from receiver.entrypoints.gcp_functions import handler

__all__ = ["handler"]
