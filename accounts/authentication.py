"""Token authentication without a database query per request.

DRF's TokenAuthentication reads the token and its user on every request: a
join compiled by the ORM, ~14 % of the web process's CPU for a POST (the
`cost` benchmark, docs/benchmarks.md). Here the token, with its user, is kept
in the shared cache (Redis outside embedded mode) for TOKEN_CACHE_SECONDS,
and dropped from it the moment the token is deleted (log-out, the user
deleted) or the user is saved (deactivated, say): what the database says
about a token is what every web process believes, with no lag on those
paths. Cache keys are SHA-256 digests: the cache never holds a key itself.

A drop that fails inside the change's transaction (Redis away) fails the
change: it rolls back, and the client is told to try again (503). One that
fails once the change has committed cannot undo it: the entry is kept in
this process and dropped again every DROP_RETRY_SECONDS until Redis takes
it, and meanwhile this process reads that token from the database
(docs/security.md, "API tokens").
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

logger = logging.getLogger(__name__)

# After the cache failed (Redis refusing, or not answering for
# REDIS_TIMEOUT_SECONDS), tokens are read from the database alone for this
# long. Socket handshakes look tokens up on one thread per web process
# (Channels' database_sync_to_async): each of them waited out Redis's
# timeout in turn, so that of five sockets opened at once while Redis did
# not answer the fifth waited five times as long, and every socket's
# database work (hello, catch-up) waited behind them.
CACHE_SKIP_SECONDS = 10.0
_cache_skipped_until = 0.0


def cache_key(key: str) -> str:
    return "auth-token:" + hashlib.sha256(key.encode()).hexdigest()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        token = self.token(key)
        if not token.user.is_active:  # as DRF checks it
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token

    def token(self, key: str) -> Token:
        """From the cache, else from the database (and then cached)."""
        name = cache_key(key)
        if time.monotonic() < _cache_skipped_until or (_undropped and name in _undropped):
            return self.from_database(key)
        try:
            cached: Token | None = cache.get(name)
        except Exception as exc:  # the cache is a shortcut: without it, the database answers
            skip_cache(exc)
            return self.from_database(key)
        if cached is not None:
            return cached
        token = self.from_database(key)
        try:
            cache.set(name, token, settings.TOKEN_CACHE_SECONDS)
        except Exception as exc:
            skip_cache(exc)
        return token

    def from_database(self, key: str) -> Token:
        """DRF's lookup, without the user's password hash: what is cached
        holds no hash (reading ``user.password`` would load it)."""
        try:
            return Token.objects.select_related("user").defer("user__password").get(key=key)
        except Token.DoesNotExist:
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None


def skip_cache(error: Exception) -> None:
    global _cache_skipped_until
    _cache_skipped_until = time.monotonic() + CACHE_SKIP_SECONDS
    logger.warning(
        "token cache unavailable, reading tokens from the database alone for %g s: %s", CACHE_SKIP_SECONDS, error
    )


def forget(keys: list[str]) -> None:
    """Drops these tokens from the cache now, and again once the change that
    calls this has committed: in between, a request that misses the cache
    reads the row as it was before the change (an admin's save and a
    deletion are transactions) and would cache that for TOKEN_CACHE_SECONDS.
    The first drop fails the change (it rolls back) when the cache does not
    take it; the second, after the commit, is kept and tried again
    (``_drop``). Outside a transaction the change has committed already: one
    drop, the second kind."""
    names = [cache_key(key) for key in keys]
    if not names:
        return
    if transaction.get_connection().in_atomic_block:
        cache.delete_many(names)
    transaction.on_commit(lambda: _drop(names))


# Drops that failed after their change committed, in the order they failed,
# and the thread that retries them. A name costs some 150 bytes here (15 MB
# at the bound); past MAX_UNDROPPED (an admin deleting that many users the
# moment Redis went away) the oldest are given up, and those tokens are
# accepted from the cache until their entries expire (TOKEN_CACHE_SECONDS).
DROP_RETRY_SECONDS = 1.0
MAX_UNDROPPED = 100_000
_undropped: dict[str, None] = {}
_undropped_lock = threading.Lock()
_retrying: threading.Thread | None = None


def _drop(names: list[str]) -> None:
    """Drops entries whose change has committed; what the cache does not
    take is kept for the retry thread. While drops are owed, Redis is away:
    later ones join them at once instead of each waiting out its timeout."""
    if not _undropped:
        try:
            cache.delete_many(names)
            return
        except Exception as exc:
            logger.warning(
                "token cache: could not drop %d token(s) revoked or changed: %s; this process reads them from "
                "the database and drops them again every %g s until the cache takes them",
                len(names),
                exc,
                DROP_RETRY_SECONDS,
            )
    _keep(names)


def _keep(names: list[str]) -> None:
    global _retrying
    with _undropped_lock:
        _undropped.update(dict.fromkeys(names))
        given_up = len(_undropped) - MAX_UNDROPPED
        if given_up > 0:
            for name in list(itertools.islice(_undropped, given_up)):
                del _undropped[name]
        if _retrying is None or not _retrying.is_alive():
            _retrying = threading.Thread(target=_retry_drops, name="token-cache-drops", daemon=True)
            _retrying.start()
    if given_up > 0:
        logger.error(
            "token cache: gave up %d undropped token entries (over %d owed): those tokens are accepted "
            "from the cache until their entries expire (TOKEN_CACHE_SECONDS)",
            given_up,
            MAX_UNDROPPED,
        )


def _retry_drops() -> None:
    global _retrying
    started = time.monotonic()
    dropped = 0
    while True:
        time.sleep(DROP_RETRY_SECONDS)
        with _undropped_lock:
            names = list(itertools.islice(_undropped, 1000))
            if not names:
                _retrying = None
                break
        try:
            cache.delete_many(names)
        except Exception as exc:  # said at WARNING once, when the first drop failed
            logger.debug("token cache: still cannot drop what is owed: %s", exc)
        else:
            dropped += len(names)
            with _undropped_lock:
                for name in names:
                    _undropped.pop(name, None)
    logger.info(
        "token cache: dropped the %d entries owed after %.0f s: those tokens are refused everywhere",
        dropped,
        time.monotonic() - started,
    )


@receiver(post_delete, sender=Token)
def forget_deleted_token(sender: Any, instance: Token, **kwargs: Any) -> None:
    forget([instance.key])


@receiver(post_save, sender=get_user_model())
def forget_tokens_of_saved_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    forget(list(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True)))
