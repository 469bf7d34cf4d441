"""Fixtures shared by the whole suite: the real servers the tests talk to."""

from tests.servers import (
    kafka_server,
    postgres_server,
    rabbitmq_server,
    redis_server,
)

__all__ = ["kafka_server", "postgres_server", "rabbitmq_server", "redis_server"]
