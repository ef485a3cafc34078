"""Django's database sessions, telling the sockets of a session that ends.

A session ends by ``flush()``: a log-out, and a log-in as another user in the
same browser (Django's ``login()`` flushes a session that holds someone
else). The sockets opened with it belonged to the user it held; they close
with 4401 on every web process (live/signals.py). Before this, only a log-out
told them: a browser whose session was taken over by a second user's log-in
(a shared computer) kept streaming the first user's events.

Expired sessions are deleted by every worker's cleanup, in batches
(accounts/services.py delete_expired_sessions), as is ``clearsessions``.
"""

from __future__ import annotations

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore


class SessionStore(DatabaseSessionStore):
    def flush(self) -> None:
        key = self.session_key
        user_id = self.get(SESSION_KEY) if key is not None else None
        super().flush()
        if key is not None and user_id is not None:
            from live.signals import session_ended

            session_ended(user_id=int(user_id), session_key=key)

    @classmethod
    def clear_expired(cls) -> None:
        from .services import delete_expired_sessions

        delete_expired_sessions()
