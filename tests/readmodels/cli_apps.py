"""What the command-line tests name with ``--app``: the bank of ``bank_app`` (wired from the same environment
variables), whole or in parts, and with ``BANK_POISON`` a comma-separated list of accounts whose deposits its
projection refuses (so a retry run from the command line fails again)."""

from __future__ import annotations

import os

from mediator import Mediator
from mediator.readmodels import ReadModels

from . import bank_app
from .bank import Bank


def bank() -> Bank:
    """The whole bank: an object with ``.engine`` and ``.mediator``, as an application's composition root is."""
    app = bank_app.bank()
    app.projection.poison.update(account for account in os.environ.get("BANK_POISON", "").split(",") if account)
    return app


def engine() -> ReadModels:
    return bank().engine


def mediator() -> Mediator:
    built: Mediator = bank().mediator
    return built


def checkout() -> ReadModels:
    """The checkout of ``checkout_process`` (a process manager, payment timeouts) on the database ``bank_app``
    names."""
    from .checkout_process import wire

    engine, _mediator, _shop, _checkout = wire(bank_app.storage())
    return engine
