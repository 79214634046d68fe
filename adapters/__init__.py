"""Adapters that implement the ports ``mediator`` and ``handlers`` define (storage, web, tracing).

Each driver is imported only inside its adapter and installed as an optional extra.
"""
