"""Alembic environment: runs the migrations of recycle_engine.storage.models online."""

from alembic import context

from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Base

config = context.config
target_metadata = Base.metadata

# Tables other libraries own in our database (APScheduler's job store) are not ours to migrate.
FOREIGN_TABLES = {"apscheduler_jobs"}


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and name in FOREIGN_TABLES)


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set"
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
