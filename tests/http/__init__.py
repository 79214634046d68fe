"""Tests of the HTTP embeddings: mediator.http, mediator.fastapi, mediator.wsgi."""
