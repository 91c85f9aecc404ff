"""lurestream: live attacker and topology events over Server-Sent Events, from NATS and MongoDB."""

__version__ = "0.1.0"
