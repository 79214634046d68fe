"""The storage contract, shipped in ``mediator.readmodels.contract``, run against every backend of the repository."""

from pathlib import Path

import pytest

from mediator.readmodels import ReadStore, RoutedStorage, Storage
from mediator.readmodels.contract import ReadStoreContract, StorageContract
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage
from tests import postgres, redis_server


class InFolder(StorageContract):
    folder: Path

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path


class TestMemory(StorageContract):
    def create_storage(self) -> Storage:
        return MemoryStorage()


class TestSqlite(InFolder):
    def create_storage(self) -> Storage:
        return SqliteStorage(self.folder / "app.db")


class TestSqliteTwoFiles(InFolder):
    def create_storage(self) -> Storage:
        return SqliteStorage(self.folder / "write.db", self.folder / "read.db")


class TestPostgres(StorageContract):
    def create_storage(self) -> Storage:
        postgres.require()
        from mediator.readmodels.postgres import PostgresStorage

        return PostgresStorage(postgres.DSN, schema=postgres.new_schema())

    def dispose_storage(self, storage: ReadStore) -> None:
        from mediator.readmodels.postgres import PostgresStorage

        storage.close()
        assert isinstance(storage, PostgresStorage)
        storage.drop_schema()


def test_the_contract_needs_a_storage_to_run_on() -> None:
    with pytest.raises(NotImplementedError, match="create_storage"):
        StorageContract().storage


class TestRedisReadStore(ReadStoreContract):
    """Redis as a read store on its own: the read side's cases."""

    def create_storage(self) -> ReadStore:
        redis_server.require()
        from mediator.readmodels.redis import RedisReadStore

        return RedisReadStore(redis_server.URL, prefix=redis_server.new_prefix())

    def dispose_storage(self, storage: ReadStore) -> None:
        from mediator.readmodels.redis import RedisReadStore

        assert isinstance(storage, RedisReadStore)
        storage.drop_all()
        storage.close()


class TestRoutedToRedis(StorageContract):
    """A memory log with projection ``p`` (most cases') in Redis and every other one beside the log: the whole
    contract through the routing."""

    def create_storage(self) -> Storage:
        redis_server.require()
        from mediator.readmodels.redis import RedisReadStore

        return RoutedStorage(MemoryStorage(), {"p": RedisReadStore(redis_server.URL, prefix=redis_server.new_prefix())})

    def dispose_storage(self, storage: ReadStore) -> None:
        from mediator.readmodels.redis import RedisReadStore

        assert isinstance(storage, RoutedStorage)
        redis = storage.read_stores["p"]
        assert isinstance(redis, RedisReadStore)
        redis.drop_all()
        storage.close()
