"""Moved to `receiver.hosts.aws_lambda`; kept so existing Lambda handler settings work."""

from receiver.hosts.aws_lambda import handler, sweep_handler

__all__ = ["handler", "sweep_handler"]
