"""dns-challenge-receiver: authenticated DNS-01 challenge callbacks in, TXT records out."""

__version__ = "0.1.0"
