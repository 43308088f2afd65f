"""Alembic environment for the invssl results database.

invssl runs it programmatically (``invssl.db.session.upgrade``), handing over a connection that
is already in the transaction the upgrade must happen in; developers run it with the ``alembic``
command and ``alembic.ini`` (database from ``$INVSSL_DB``, else ``sqlite:///invssl.db``).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import MetaData, TypeDecorator

from invssl.db.session import VERSION_TABLE, make_engine, resolve_url

config = context.config


def _target_metadata() -> MetaData:
    # For the alembic command's autogenerate and check only; invssl's own upgrades pass no
    # metadata, since the live models describe the newest schema, not the one being migrated.
    from invssl.db.models import Base

    return Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import invssl's column types: write a decorated type as its impl.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        autogen_context.imports.add("import sqlalchemy as sa")
        return f"sa.{obj.impl!r}"
    return False


OPTIONS: dict[str, Any] = {
    "version_table": VERSION_TABLE,
    # SQLite can alter little in place; batch mode recreates the table instead.
    "render_as_batch": True,
    "render_item": _render_item,
    "compare_type": True,
}


def run_offline() -> None:
    context.configure(
        url=resolve_url(config.get_main_option("sqlalchemy.url")),
        literal_binds=True,
        target_metadata=_target_metadata(),
        **OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=None, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(resolve_url(config.get_main_option("sqlalchemy.url")), migrating=True)
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=_target_metadata(), **OPTIONS)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


# The alembic command configures logging from alembic.ini; invssl, calling in-process, has no
# config file and keeps its own logging untouched.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
