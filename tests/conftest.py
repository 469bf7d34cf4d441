"""Fixtures shared by the whole suite: the real servers the tests talk to,
and the ``--long`` option that runs the long variants."""

import pytest

from tests.servers import (
    kafka_server,
    postgres_server,
    rabbitmq_server,
    redis_server,
)

__all__ = ["kafka_server", "postgres_server", "rabbitmq_server", "redis_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here rather than in tests/reliability/, so that ``pytest --long``
    # works from the repository root as well as on that folder.
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long variants (the reliability suite's full counts)",
    )
