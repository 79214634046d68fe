"""The README's "Embedding in FastAPI" service, served by uvicorn on loopback: the README's doctest runs it in
process (httpx's ``ASGITransport``); these run it over real HTTP.

:func:`tasks_service` is the README's code, duplicated deliberately (a README cannot import it), with the types
mypy wants; change the two together.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from mediator import AuthenticationError, Command, Event, Query, Registry, current_context
from mediator.fastapi import Mediated, MediatorMiddleware, install_error_handlers
from mediator.readmodels import EventTypes, Projection, ProjectionSession, ReadModels, Table, UnitOfWork, on
from mediator.readmodels.memory import MemoryStorage

from .servers import serving

# -- the README's service -----------------------------------------------------------------------------------------


class TaskNotFound(LookupError): ...


class TaskExists(ValueError): ...


@attrs.frozen(kw_only=True)
class AddTask(Command[None]):
    task_id: str
    title: str


@attrs.frozen(kw_only=True)
class TaskAdded(Event):
    task_id: str
    title: str
    owner: str


@attrs.frozen(kw_only=True)
class Task:  # the read model's row
    task_id: str
    title: str
    owner: str


@attrs.frozen(kw_only=True)
class GetTask(Query[Task | None]):
    reads = ("tasks",)
    task_id: str


def add_task(command: AddTask, uow: UnitOfWork) -> None:
    taken = uow.handle.setdefault("task_ids", set())  # the write model (MemoryStorage: a dict)
    if command.task_id in taken:
        raise TaskExists(f"Task {command.task_id} exists already.")
    taken.add(command.task_id)
    owner = current_context().principal  # who the principal resolver says is acting
    uow.record(TaskAdded(task_id=command.task_id, title=command.title, owner=owner), key=command.task_id)


class Tasks(Projection):
    name = "tasks"
    tasks = Table(Task, key="task_id")

    @on(TaskAdded)
    def added(self, event: TaskAdded, session: ProjectionSession) -> None:
        session.put(self.tasks, Task(task_id=event.task_id, title=event.title, owner=event.owner))


API_KEYS = {"key-of-ada": "ada"}


def who(headers: Mapping[str, str]) -> str:  # the principal resolver; in a service, verify a signed token here
    key = headers.get("x-api-key")
    if key is None:
        return "anonymous"
    if key not in API_KEYS:
        raise AuthenticationError("The API key is not valid")
    return API_KEYS[key]


class NewTask(BaseModel):
    task_id: str
    title: str


def tasks_service() -> tuple[Any, ReadModels]:
    """The README's service (what it serves, and its engine, whose runner the caller starts)."""
    event_types = EventTypes()
    event_types.register(TaskAdded, name="tasks.added", version=1)
    storage = MemoryStorage()
    engine = ReadModels(storage, event_types).add(Tasks())
    registry = Registry()
    engine.install(registry)
    registry.handle(AddTask).by(add_task)
    registry.handle(GetTask).by(lambda query: engine.get(Tasks.tasks, query.task_id))
    mediator = registry.build_async()

    app = FastAPI()
    install_error_handlers(app, {TaskNotFound: (404, "not_found"), TaskExists: (409, "conflict")})

    @app.post("/tasks", status_code=201)
    async def add(body: NewTask, mediator: Mediated) -> None:
        await mediator.send(AddTask(task_id=body.task_id, title=body.title))

    @app.get("/tasks/{task_id}")
    async def get(task_id: str, mediator: Mediated) -> dict[str, str]:
        if (task := await mediator.ask(GetTask(task_id=task_id))) is None:
            raise TaskNotFound(f"No task {task_id}.")
        return {"title": task.title, "owner": task.owner}

    return MediatorMiddleware(app, mediator, principal=who, engine=engine), engine


# -- over real HTTP -----------------------------------------------------------------------------------------------

ADA = {"X-API-Key": "key-of-ada"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    service, engine = tasks_service()
    with engine, serving(service) as served:
        yield served


def test_a_command_answers_with_its_token_and_a_query_sent_with_it_reads_the_write(client: httpx.Client) -> None:
    for number in range(1, 4):
        added = client.post("/tasks", headers=ADA, json={"task_id": f"t-{number}", "title": f"Task {number}"})
        assert added.status_code == 201
        assert added.headers["X-Consistency-Token"] == str(number)  # the position of its commit in the log
        token = added.headers["X-Consistency-Token"]
        read = client.get(f"/tasks/t-{number}", headers={**ADA, "X-Consistent-With": token})
        assert (read.status_code, read.json()) == (200, {"title": f"Task {number}", "owner": "ada"})
        assert "X-Consistency-Token" not in read.headers  # a query commits nothing


def test_the_principal_is_who_the_resolver_says_and_a_forged_key_a_401(client: httpx.Client) -> None:
    token = client.post("/tasks", json={"task_id": "t-1", "title": "Anyone's"}).headers["X-Consistency-Token"]
    assert client.get("/tasks/t-1", headers={"X-Consistent-With": token}).json()["owner"] == "anonymous"
    forged = client.post("/tasks", headers={"X-API-Key": "forged"}, json={"task_id": "t-2", "title": "Nope"})
    assert (forged.status_code, forged.json()["error"]) == (401, "unauthenticated")
    assert client.get("/tasks/t-2").status_code == 404  # the route never ran


def test_a_token_beyond_the_last_write_is_a_400_at_once(client: httpx.Client) -> None:
    token = client.post("/tasks", headers=ADA, json={"task_id": "t-1", "title": "One"}).headers["X-Consistency-Token"]
    started = time.monotonic()
    beyond = client.get("/tasks/t-1", headers={**ADA, "X-Consistent-With": str(int(token) + 1)})
    assert (beyond.status_code, beyond.json()["error"]) == (400, "bad_request")
    assert "beyond the last write (1)" in beyond.json()["detail"]
    assert time.monotonic() - started < 2.5  # refused, not waited for until the 5 s timeout
    assert client.get("/tasks/t-1", headers={**ADA, "X-Consistent-With": token}).status_code == 200


def test_the_applications_own_errors_answer_as_its_status_map_says(client: httpx.Client) -> None:
    missing = client.get("/tasks/nowhere", headers=ADA)
    assert (missing.status_code, missing.json()) == (404, {"error": "not_found", "detail": "No task nowhere."})
    assert client.post("/tasks", headers=ADA, json={"task_id": "t-1", "title": "One"}).status_code == 201
    again = client.post("/tasks", headers=ADA, json={"task_id": "t-1", "title": "Two"})
    assert (again.status_code, again.json()) == (409, {"error": "conflict", "detail": "Task t-1 exists already."})
    assert "X-Consistency-Token" not in again.headers  # nothing was committed


def test_a_body_that_does_not_validate_is_a_422_naming_its_fields(client: httpx.Client) -> None:
    invalid = client.post("/tasks", headers=ADA, json={"task_id": "t-1"})
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "validation"
    assert list(invalid.json()["fields"]) == ["title"]
