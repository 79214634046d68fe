"""Command, query and event handlers of the reference application.

They import ``domain`` and ``mediator``, never ``adapters``.
"""
