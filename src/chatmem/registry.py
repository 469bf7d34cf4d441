"""URL schemes and the backends that serve them.

Built-in backends are named here by import path and imported only when a
URL asks for them, so ``import chatmem`` needs none of their clients.
Other packages add backends through the ``chatmem.backends`` entry-point
group: the entry point's name is the URL scheme and its value the class,
for example ``mongodb = chatmem_mongo:MongoMemory``. A backend class takes
the URL and the options in ``from_url(url, **options)``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any, cast

from chatmem.base import BaseChatMessageMemory
from chatmem.errors import InvalidMessage, UnknownBackend

__all__ = ["BUILTIN", "backend_class", "known_schemes"]

log = logging.getLogger(__name__)

# scheme -> (module, class, the extra that installs its client)
BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "memory": ("chatmem.backends.memory", "ArenaMemory", None),
    "sqlite": ("chatmem.backends.sqlite", "SQLiteMemory", None),
    "redis": ("chatmem.backends.redis", "RedisMemory", "redis"),
    "postgresql": ("chatmem.backends.postgres", "PostgresMemory", "postgres"),
    "postgres": ("chatmem.backends.postgres", "PostgresMemory", "postgres"),
    "kafka": ("chatmem.backends.kafka", "KafkaMemory", "kafka"),
    "rabbitmq": ("chatmem.backends.rabbitmq", "RabbitMQMemory", "rabbitmq"),
}

ENTRY_POINT_GROUP = "chatmem.backends"


def known_schemes() -> list[str]:
    """Return every URL scheme a backend is registered for, sorted."""
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(BUILTIN) | plugins)


def backend_class(scheme: str) -> type[BaseChatMessageMemory]:
    """Return the backend class for a URL scheme, importing it if needed.

    Raises :class:`UnknownBackend` naming the known schemes and the closest
    one, and :class:`ImportError` with the ``pip install`` line when the
    backend's client library is missing.
    """
    if scheme in BUILTIN:
        module_name, class_name, extra = BUILTIN[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if extra is None or exc.name == module_name:
                raise
            raise ImportError(
                f"The {scheme} backend needs the {exc.name} package: "
                f"pip install 'chatmem[{extra}]'."
            ) from exc
        return cast(type[BaseChatMessageMemory], getattr(module, class_name))

    for ep in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        log.debug("loading backend %s from %s", scheme, ep.value)
        return cast(type[BaseChatMessageMemory], ep.load())

    known = known_schemes()
    close = difflib.get_close_matches(scheme, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownBackend(
        f"No chatmem backend serves the URL scheme {scheme!r}.{hint} "
        f"Known schemes: {', '.join(known)}."
    )


def open_url(url: str, **options: Any) -> BaseChatMessageMemory:
    """Open the store a URL names; see :func:`chatmem.open`."""
    if not isinstance(url, str) or "://" not in url:
        raise UnknownBackend(
            f"{url!r} is not a chatmem URL; write it as scheme://..., for "
            "example sqlite:///chat.db or memory://."
        )
    scheme = url.split("://", 1)[0].lower()
    cls = backend_class(scheme)
    from_url = getattr(cls, "from_url", None)
    if from_url is None:
        raise UnknownBackend(
            f"The backend class {cls.__name__} for {scheme!r} has no "
            "from_url(url, **options) constructor."
        )
    cache_bytes = options.pop("cache_bytes", None)
    cache_staleness = options.pop("cache_staleness", None)
    if cache_bytes is None:
        if cache_staleness is not None:
            raise InvalidMessage("cache_staleness needs cache_bytes: a hot tier.")
        return cast(BaseChatMessageMemory, from_url(url, **options))

    # The hot tier wraps whatever the scheme opened; backends know
    # nothing of it.
    from chatmem.tiered import TieredMemory

    store = cast(BaseChatMessageMemory, from_url(url, **options))
    try:
        return TieredMemory(store, cache_bytes, cache_staleness)
    except BaseException:
        store.close()
        raise
