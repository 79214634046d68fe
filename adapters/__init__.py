"""The reference shop's adapters: its write model and read views on memory, SQLite and PostgreSQL, its HTTP
(FastAPI) and WSGI apps, and its composition root (``adapters.shop_app.build_shop``).

They implement the ports ``handlers`` defines, on the framework's public modules; the framework's own
integrations (storage backends, the embeddings, OpenTelemetry, brokers) live in the ``mediator`` package.
"""
