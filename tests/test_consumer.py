"""The /ws/ consumer alone, with Channels' communicator and in-memory layer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import OperationalError, connections
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts.authentication import CachedTokenAuthentication
from live import consumers, services
from live.consumers import CLOSE_UNAUTHENTICATED
from live.events import user_group
from live.models import Event, EventStream
from tasklight.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# What a browser on http://localhost sends: its page's origin, and the host.
ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")


@pytest.fixture(autouse=True)
def in_memory_layer(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def token_header(user: User) -> tuple[bytes, bytes]:
    return (b"authorization", f"Token {Token.objects.get_or_create(user=user)[0].key}".encode())


def session_cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.fixture
async def open_socket() -> AsyncIterator[Callable[..., Any]]:
    """Opens sockets and closes them all at the end."""
    opened: list[WebsocketCommunicator] = []

    async def open_(*headers: tuple[bytes, bytes]) -> tuple[WebsocketCommunicator, Any, Any]:
        communicator = WebsocketCommunicator(application, "/ws/", headers=list(headers))
        opened.append(communicator)
        connected, code = await communicator.connect(timeout=5)
        return communicator, connected, code

    yield open_
    for communicator in opened:
        await communicator.disconnect()


async def store_event(user: User, sequence: int, kind: str = "task.succeeded") -> dict[str, Any]:
    """An event as record_event stores it; returns its frame."""
    task = {"id": f"task-{sequence}", "kind": "simulate", "status": kind.split(".")[1]}

    def store() -> None:
        EventStream.objects.update_or_create(user=user, defaults={"last_event_id": sequence})
        Event.objects.create(user=user, sequence=sequence, kind=kind, task=task)

    await sync_to_async(store)()
    return {"type": "event", "id": sequence, "event": kind, "task": task}


def layer() -> Any:
    return get_channel_layer()


async def push(user: User, frame: dict[str, Any]) -> None:
    await layer().group_send(user_group(user.id), {"type": "live.event", "frame": frame})


async def test_a_token_opens_the_socket_and_hello_names_the_user(open_socket, alice: User) -> None:
    socket, connected, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert connected
    assert await socket.receive_json_from() == {
        "type": "hello",
        "user": "alice",
        "last_event_id": 0,
        "unread": 0,
        "read_up_to": 0,
    }


async def test_the_session_cookie_opens_the_socket_from_an_allowed_origin(open_socket, alice: User) -> None:
    await store_event(alice, 1)
    socket, connected, _ = await open_socket(ORIGIN, HOST, await sync_to_async(session_cookie)(alice))
    assert connected
    assert await socket.receive_json_from() == {
        "type": "hello",
        "user": "alice",
        "last_event_id": 1,
        "unread": 1,
        "read_up_to": 0,
    }


async def test_a_session_cookie_without_an_origin_is_not_enough(open_socket, alice: User) -> None:
    socket, _, _ = await open_socket(await sync_to_async(session_cookie)(alice))
    assert (await socket.receive_output())["code"] == CLOSE_UNAUTHENTICATED


@pytest.mark.parametrize(
    "headers",
    [
        [ORIGIN, HOST],
        [],
        [(b"authorization", b"Token no-such-token")],
        [(b"authorization", b"Bearer something")],
        [ORIGIN, HOST, (b"cookie", b"sessionid=forged")],
    ],
)
async def test_anonymous_sockets_are_closed_with_4401(open_socket, headers: list) -> None:
    socket, connected, _ = await open_socket(*headers)
    assert connected
    assert await socket.receive_output() == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


async def test_a_revoked_token_no_longer_opens_a_socket(open_socket, alice: User) -> None:
    header = await sync_to_async(token_header)(alice)
    socket, connected, _ = await open_socket(header)  # the token is cached from here on
    assert connected
    assert (await socket.receive_json_from())["type"] == "hello"
    await sync_to_async(Token.objects.filter(user=alice).delete)()
    again, connected, _ = await open_socket(header)
    assert connected
    assert await again.receive_output() == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


async def test_a_foreign_origin_is_refused_at_the_handshake(open_socket, alice: User) -> None:
    _, connected, _ = await open_socket((b"origin", b"http://evil.example"), await sync_to_async(token_header)(alice))
    assert not connected


@pytest.mark.parametrize(
    "origin",
    [
        b"http://localhost:9999",  # another port of the same host: another app, a dev server
        b"https://localhost",  # the page came over https, the socket over plain ws
        b"http://localhost.evil.example",
        b"null",
    ],
)
async def test_only_the_sites_own_origin_opens_a_cookie_socket(open_socket, alice: User, origin: bytes) -> None:
    """The host name alone was checked: a page on another port of the host
    read a signed-in user's events (it needs no more than their cookie,
    which the browser sends along)."""
    cookie = await sync_to_async(session_cookie)(alice)
    _, connected, _ = await open_socket((b"origin", origin), (b"host", b"localhost"), cookie)
    assert not connected


async def test_a_trusted_origin_opens_a_cookie_socket(open_socket, alice: User, settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://tasklight.example.com"]
    cookie = await sync_to_async(session_cookie)(alice)
    socket, connected, _ = await open_socket((b"origin", b"https://Tasklight.example.com"), HOST, cookie)
    assert connected
    assert (await socket.receive_json_from())["type"] == "hello"


async def test_ping_is_answered_with_pong(open_socket, alice: User) -> None:
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    await socket.send_json_to({"type": "ping", "id": "abc"})
    assert await socket.receive_json_from() == {"type": "pong", "id": "abc"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text_data": "{not json"}, "invalid_json"),
        ({"bytes_data": b"\x00\x01"}, "binary_not_supported"),
        ({"text_data": "[1, 2]"}, "invalid_frame"),
        ({"text_data": '{"id": 1}'}, "invalid_frame"),
        ({"text_data": '{"type": "subscribe"}'}, "unknown_type"),
        ({"text_data": '{"type": "resume", "after": "x"}'}, "invalid_resume"),
        ({"text_data": '{"type": "resume", "after": 99}'}, "invalid_resume"),
        # Python's json takes these; JSON has none of them (a pong would echo NaN).
        ({"text_data": '{"type": "ping", "id": NaN}'}, "invalid_json"),
        ({"text_data": '{"type": "ping", "id": -Infinity}'}, "invalid_json"),
        ({"text_data": '{"type": "ping", "id": 1e400}'}, "invalid_json"),
        # 20 KB, under the frame limit, deeper than Python's recursion limit.
        ({"text_data": "[" * 20000}, "invalid_json"),
        ({"text_data": '{"type": "ping", "id": ' + "[" * 20000 + "]" * 20000 + "}"}, "invalid_json"),
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(open_socket, alice: User, frame, code) -> None:
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    await socket.send_to(**frame)
    error = await socket.receive_json_from()
    assert (error["type"], error["code"]) == ("error", code)
    await socket.send_json_to({"type": "ping", "id": 2})
    assert await socket.receive_json_from() == {"type": "pong", "id": 2}


async def test_events_reach_every_socket_of_the_owner_and_nobody_else(open_socket, alice: User, bob: User) -> None:
    first, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    second, _, _ = await open_socket(ORIGIN, HOST, await sync_to_async(session_cookie)(alice))
    bobs, _, _ = await open_socket(await sync_to_async(token_header)(bob))
    for socket in (first, second, bobs):
        await socket.receive_json_from()
    alices_event = await store_event(alice, 1)
    await push(alice, alices_event)
    assert await first.receive_json_from() == alices_event
    assert await second.receive_json_from() == alices_event
    # Bob's own event, sent after alice's, is the first thing bob hears.
    bobs_event = await store_event(bob, 1)
    await push(bob, bobs_event)
    assert await bobs.receive_json_from() == bobs_event


async def test_progress_frames_are_forwarded(open_socket, alice: User) -> None:
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    frame = {"type": "progress", "task": {"id": "t", "progress": 40}}
    await layer().group_send(user_group(alice.id), {"type": "live.progress", "frame": frame})
    assert await socket.receive_json_from() == frame


async def test_live_events_and_progress_are_sent_without_a_hop_to_a_thread(
    open_socket, alice: User, monkeypatch
) -> None:
    """Channels' dispatch closes stale connections in a thread before every
    handler; the consumer's database calls do that themselves, so an event
    that needs no database is sent straight from the event loop."""
    from asgiref.sync import SyncToAsync

    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    stored = [await store_event(alice, n) for n in (1, 2, 3)]
    crossings: list[str] = []
    original_call = SyncToAsync.__call__

    async def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        crossings.append(getattr(self.func, "__name__", repr(self.func)))
        return await original_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    await push(alice, stored[0])
    assert await socket.receive_json_from() == stored[0]
    progress = {"type": "progress", "task": {"id": "t", "progress": 40}}
    await layer().group_send(user_group(alice.id), {"type": "live.progress", "frame": progress})
    assert await socket.receive_json_from() == progress
    assert crossings == []
    # A gap still reads the missing event from the table, in a thread.
    await push(alice, stored[2])
    assert [await socket.receive_json_from() for _ in range(2)] == stored[1:]
    assert crossings == ["events_after"]


async def test_resume_replays_stored_events_in_order_then_goes_live(open_socket, alice: User) -> None:
    stored = [await store_event(alice, n) for n in (1, 2, 3)]
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert (await socket.receive_json_from())["last_event_id"] == 3
    await socket.send_json_to({"type": "resume", "after": 1})
    assert [await socket.receive_json_from() for _ in range(2)] == stored[1:]
    live = await store_event(alice, 4)
    await push(alice, stored[2])  # a late copy of an event already replayed
    await push(alice, live)
    assert await socket.receive_json_from() == live


async def test_a_resume_after_live_events_sends_the_older_ones_once(open_socket, alice: User) -> None:
    """Live events flow from hello on; a resume that arrives after one of
    them adds the older stored ones, and does not send the live one again."""
    stored = [await store_event(alice, n) for n in (1, 2)]
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert (await socket.receive_json_from())["last_event_id"] == 2
    live = await store_event(alice, 3)
    await push(alice, live)
    assert await socket.receive_json_from() == live
    await socket.send_json_to({"type": "resume", "after": 0})
    await socket.send_json_to({"type": "resume", "after": 1})  # had already: nothing again
    await socket.send_json_to({"type": "ping", "id": "end"})
    assert [await socket.receive_json_from() for _ in range(3)] == [*stored, {"type": "pong", "id": "end"}]
    following = await store_event(alice, 4)
    await push(alice, following)
    assert await socket.receive_json_from() == following


async def test_a_live_event_that_skips_ahead_is_preceded_by_the_missing_one(open_socket, alice: User) -> None:
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    first, second = await store_event(alice, 1), await store_event(alice, 2)
    await push(alice, second)  # from a faster process
    await push(alice, first)  # the slower one, late
    await socket.send_json_to({"type": "ping", "id": "end"})
    assert [await socket.receive_json_from() for _ in range(3)] == [first, second, {"type": "pong", "id": "end"}]


async def test_resuming_from_before_retention_gets_resync(open_socket, alice: User) -> None:
    for n in (1, 2, 3):
        await store_event(alice, n)
    await sync_to_async(Event.objects.filter(user=alice, sequence__lt=3).delete)()
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    await socket.send_json_to({"type": "resume", "after": 0})
    assert await socket.receive_json_from() == {"type": "resync", "last_event_id": 3}
    # Resuming from a kept point still replays.
    await socket.send_json_to({"type": "resume", "after": 2})
    assert (await socket.receive_json_from())["id"] == 3


async def test_a_ping_delivers_stored_events_the_layer_lost(open_socket, alice: User) -> None:
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    lost = await store_event(alice, 1)  # stored, never pushed: as if Redis dropped it
    await socket.send_json_to({"type": "ping", "id": 7})
    assert await socket.receive_json_from() == lost
    assert await socket.receive_json_from() == {"type": "pong", "id": 7}
    await push(alice, lost)  # a late copy is dropped
    await socket.send_json_to({"type": "ping", "id": 8})
    assert await socket.receive_json_from() == {"type": "pong", "id": 8}


async def test_a_ping_brings_the_inbox_a_lost_message_never_did(open_socket, alice: User) -> None:
    await store_event(alice, 1)
    await store_event(alice, 2, kind="task.failed")
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    hello = await socket.receive_json_from()
    assert (hello["unread"], hello["read_up_to"], hello["last_event_id"]) == (2, 0, 2)
    # Marked read in another tab, and its message to this socket lost.
    await sync_to_async(EventStream.objects.filter(user=alice).update)(read_up_to=1)
    await socket.send_json_to({"type": "ping", "id": 1})
    assert await socket.receive_json_from() == {"type": "inbox", "unread": 1, "read_up_to": 1, "last_event_id": 2}
    assert await socket.receive_json_from() == {"type": "pong", "id": 1}
    # Told once; and a late copy of an older inbox message is not sent.
    await layer().group_send(
        user_group(alice.id), {"type": "live.inbox", "frame": {"type": "inbox", "unread": 2, "read_up_to": 0}}
    )
    for ping in (2, 3):  # whichever the socket takes first, the copy or a ping
        await socket.send_json_to({"type": "ping", "id": ping})
        assert await socket.receive_json_from() == {"type": "pong", "id": ping}


async def test_inbox_frames_reach_every_socket_of_the_user(open_socket, alice: User) -> None:
    first, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    second, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    for socket in (first, second):
        await socket.receive_json_from()
    frame = {"type": "inbox", "unread": 0, "read_up_to": 4}
    await layer().group_send(user_group(alice.id), {"type": "live.inbox", "frame": frame})
    assert await first.receive_json_from() == frame
    assert await second.receive_json_from() == frame


async def test_a_flood_of_frames_closes_the_socket_with_4429(open_socket, alice: User, settings) -> None:
    settings.WS_FRAME_BURST, settings.WS_FRAME_RATE = 5, 0.001
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    for n in range(6):
        await socket.send_json_to({"type": "ping", "id": n})
    assert [(await socket.receive_json_from())["id"] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert (await socket.receive_json_from())["code"] == "too_many_frames"
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4429}
    # Frames the client sent before it heard of the close get nothing: the
    # server sends no frame after its close (uvicorn raises on one).
    await socket.send_json_to({"type": "ping", "id": "late"})
    await push(alice, await store_event(alice, 1))
    assert await socket.receive_nothing(timeout=0.3)


async def test_a_socket_gives_its_slot_back_when_it_ends_with_an_error(
    open_socket, alice: User, settings, monkeypatch
) -> None:
    """A client gone in the middle of a replay makes sending raise; Channels
    then never calls disconnect(). The slot must come back all the same, or a
    few reloads during replays lock the user out of /ws/."""
    settings.MAX_SOCKETS_PER_USER = 1
    await store_event(alice, 1)
    # Not open_socket's: this one ends with the error, and is not closed again.
    socket = WebsocketCommunicator(application, "/ws/", headers=[await sync_to_async(token_header)(alice)])
    assert (await socket.connect(timeout=5))[0]
    await socket.receive_json_from()
    assert consumers._sockets_per_user[alice.id] == 1

    def gone(**kwargs: Any) -> Any:
        raise ConnectionResetError("the client went away")

    monkeypatch.setattr(services, "events_after", gone)
    await socket.send_json_to({"type": "resume", "after": 0})
    with pytest.raises(ConnectionResetError):
        await socket.receive_output()
    assert alice.id not in consumers._sockets_per_user
    monkeypatch.undo()
    again, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert (await again.receive_json_from())["type"] == "hello"


async def test_a_resume_after_a_resync_does_not_send_again_what_the_socket_had(open_socket, alice: User) -> None:
    """Events 1-3 are past retention; 4-6 reach the socket live. A resume
    from 1 answers resync; one from 3 then has nothing to send."""
    for n in (1, 2, 3):
        await store_event(alice, n)
    await sync_to_async(Event.objects.filter(user=alice).delete)()
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert (await socket.receive_json_from())["last_event_id"] == 3
    for n in (4, 5, 6):
        await push(alice, await store_event(alice, n))
        assert (await socket.receive_json_from())["id"] == n
    await socket.send_json_to({"type": "resume", "after": 1})
    assert await socket.receive_json_from() == {"type": "resync", "last_event_id": 6}
    await socket.send_json_to({"type": "resume", "after": 3})
    await socket.send_json_to({"type": "ping", "id": "end"})
    assert await socket.receive_json_from() == {"type": "pong", "id": "end"}


async def test_sockets_per_user_are_capped_and_others_are_unaffected(
    open_socket, alice: User, bob: User, settings
) -> None:
    settings.MAX_SOCKETS_PER_USER = 2
    for _ in range(2):
        socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
        assert (await socket.receive_json_from())["type"] == "hello"
    third, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert (await third.receive_json_from())["code"] == "too_many_sockets"
    assert await third.receive_output() == {"type": "websocket.close", "code": 4429}
    bobs, _, _ = await open_socket(await sync_to_async(token_header)(bob))
    assert (await bobs.receive_json_from())["type"] == "hello"


async def test_resume_replays_only_the_users_own_events(open_socket, alice: User, bob: User) -> None:
    for n in (1, 2):
        await store_event(alice, n)
    await store_event(bob, 1)
    socket, _, _ = await open_socket(await sync_to_async(token_header)(bob))
    assert (await socket.receive_json_from())["last_event_id"] == 1
    await socket.send_json_to({"type": "resume", "after": 0})
    replayed = await socket.receive_json_from()
    assert (replayed["id"], replayed["task"]["id"]) == (1, "task-1")
    await socket.send_json_to({"type": "ping", "id": "end"})
    assert await socket.receive_json_from() == {"type": "pong", "id": "end"}
    # Alice's event 2 does not exist for bob: resuming after 1 is the newest.
    await socket.send_json_to({"type": "resume", "after": 2})
    assert (await socket.receive_json_from())["code"] == "invalid_resume"


async def test_a_cursor_beyond_the_newest_event_is_refused_by_the_socket_and_over_rest_alike(
    open_socket, alice: User
) -> None:
    """The two doors to the event log agree (docs/events.md): the newest id
    is up to date (nothing to send, an empty page); one beyond it is a bad
    cursor, with the same message."""
    for n in (1, 2):
        await store_event(alice, n)
    header = await sync_to_async(token_header)(alice)
    socket, _, _ = await open_socket(header)
    await socket.receive_json_from()
    api = APIClient(HTTP_AUTHORIZATION=header[1].decode())
    await socket.send_json_to({"type": "resume", "after": 2})
    await socket.send_json_to({"type": "ping", "id": "up to date"})
    assert await socket.receive_json_from() == {"type": "pong", "id": "up to date"}
    up_to_date = await sync_to_async(api.get)("/api/events/?after=2")
    assert (up_to_date.status_code, up_to_date.json()["results"]) == (200, [])
    await socket.send_json_to({"type": "resume", "after": 3})
    refused = await socket.receive_json_from()
    over_rest = await sync_to_async(api.get)("/api/events/?after=3")
    assert refused["code"] == "invalid_resume" and over_rest.status_code == 400
    assert over_rest.json()["error"]["fields"]["after"] == [refused["message"]]


async def test_the_database_away_does_not_cost_the_socket(open_socket, alice: User, monkeypatch) -> None:
    """A gap that cannot be filled drops the early event (it is stored, and
    comes with the missing one from the table later) and a ping is still
    answered; a resume that cannot be served closes with 1013, so that the
    client reconnects and resumes again. Before, each of them crashed the
    consumer, and the server dropped the connection without a close frame."""
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    first, second = await store_event(alice, 1), await store_event(alice, 2)
    events_after = services.events_after

    def database_down(**kwargs: Any) -> Any:
        raise OperationalError("the database is away")

    monkeypatch.setattr(services, "events_after", database_down)
    await push(alice, second)  # ahead of the first: the gap cannot be filled now
    await socket.send_json_to({"type": "ping", "id": "away"})
    assert await socket.receive_json_from() == {"type": "pong", "id": "away"}
    monkeypatch.setattr(services, "events_after", events_after)
    await socket.send_json_to({"type": "ping", "id": "back"})
    assert [await socket.receive_json_from() for _ in range(3)] == [first, second, {"type": "pong", "id": "back"}]

    monkeypatch.setattr(services, "events_after", database_down)
    await socket.send_json_to({"type": "resume", "after": 0})
    assert await socket.receive_output() == {"type": "websocket.close", "code": 1013}


async def test_behind_a_tls_proxy_the_https_origin_is_the_sites_own(open_socket, alice: User, settings) -> None:
    """As Django's is_secure(): the proxy's X-Forwarded-Proto counts where
    SECURE_PROXY_SSL_HEADER says so (production settings, HTTPS on)."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    cookie = await sync_to_async(session_cookie)(alice)
    proxied = (b"x-forwarded-proto", b"https")
    socket, connected, _ = await open_socket((b"origin", b"https://localhost"), HOST, proxied, cookie)
    assert connected
    assert (await socket.receive_json_from())["type"] == "hello"
    _, plain, _ = await open_socket((b"origin", b"http://localhost"), HOST, proxied, cookie)
    assert not plain  # the page was https: an http origin is another one


@pytest.mark.parametrize("credential", ["token", "session"])
async def test_a_handshake_while_the_database_is_away_is_told_to_try_again(
    open_socket, alice: User, monkeypatch, credential: str
) -> None:
    """Looking up the token's or the session's user failed with the
    database, and uvicorn answered the handshake with a 500: now accepted
    and closed with 1013, as a hello that cannot be read is."""
    headers = (
        [await sync_to_async(token_header)(alice)]
        if credential == "token"
        else [await sync_to_async(session_cookie)(alice), ORIGIN, HOST]
    )

    def database_down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the database is away")

    monkeypatch.setattr(CachedTokenAuthentication, "authenticate_credentials", database_down)
    monkeypatch.setattr(ModelBackend, "get_user", database_down)
    socket, connected, _ = await open_socket(*headers)
    assert connected
    assert await socket.receive_output() == {"type": "websocket.close", "code": 1013}
    # No consumer ran to close the connection token_header() opened in its thread.
    await sync_to_async(connections.close_all)()


def layer_away(failures: int | None = None) -> Callable[..., Any]:
    """A layer call that fails as channels_redis does when Redis resets or
    refuses the connection: the first ``failures`` times, or always."""
    calls = 0

    def fail(call: Callable[..., Any]) -> Callable[..., Any]:
        async def failing(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if failures is None or calls <= failures:
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            return await call(*args, **kwargs)

        return failing

    return fail


@pytest.mark.parametrize("step", ["new_channel", "group_add"])
async def test_a_socket_the_channel_layer_cannot_take_is_told_to_try_again(
    open_socket, alice: User, monkeypatch, caplog, step: str
) -> None:
    """Redis away when the socket is given its channel or joins its user's
    group: the handshake was answered with a 500 (an ERROR traceback in
    uvicorn's log). Now accepted and closed with 1013, as for a database
    away, with a warning that names the cause; the slot is given back."""
    monkeypatch.setattr(InMemoryChannelLayer, step, layer_away()(getattr(InMemoryChannelLayer, step)))
    socket, connected, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert connected
    assert await socket.receive_output() == {"type": "websocket.close", "code": 1013}
    warned = [r for r in caplog.records if r.name == "live.consumers" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        f"socket of user {alice.id} refused for now (closed with 1013), the channel layer is unavailable: "
        "ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    ]
    assert alice.id not in consumers._sockets_per_user
    # No credentials: still 4401 (do not come back), not 1013.
    anonymous, connected, _ = await open_socket()
    assert connected
    assert await anonymous.receive_output() == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


@pytest.mark.parametrize("step", ["new_channel", "group_add"])
async def test_a_layer_call_that_finds_its_connection_reset_is_tried_once_more(
    open_socket, alice: User, monkeypatch, step: str
) -> None:
    """A connection Redis reset (restarted, or the connection killed) fails
    the one command that finds it so; redis-py has reconnected meanwhile."""
    monkeypatch.setattr(InMemoryChannelLayer, step, layer_away(failures=1)(getattr(InMemoryChannelLayer, step)))
    socket, connected, _ = await open_socket(await sync_to_async(token_header)(alice))
    assert connected
    assert (await socket.receive_json_from())["type"] == "hello"
    await push(alice, await store_event(alice, 1))
    assert (await socket.receive_json_from())["id"] == 1  # in its group: live events reach it


@pytest.mark.parametrize("path", ["/ws", "/ws/x/", "/api/tasks/", "/nope"])
async def test_a_socket_on_another_path_is_refused_at_the_handshake(alice: User, path: str) -> None:
    """Channels' router raised for a path it did not know, and uvicorn
    answered the handshake with a 500 (an ERROR line each time)."""
    communicator = WebsocketCommunicator(application, path, headers=[await sync_to_async(token_header)(alice)])
    connected, _code = await communicator.connect(timeout=5)
    assert connected is False  # closed before being accepted: uvicorn answers 403
    await sync_to_async(connections.close_all)()


def delete_behind_djangos_back(model: Any, **lookup: Any) -> None:
    """Deletes rows with SQL, no signal sent: as if the message that tells
    the sockets had been lost (Redis away when it was published)."""
    model.objects.filter(**lookup)._raw_delete(using="default")


async def test_a_socket_whose_credential_ended_unannounced_closes_at_its_next_check(
    open_socket, alice: User, bob: User, settings
) -> None:
    """Told nothing (the sign-out message lost), a token's socket stayed
    open as long as it was connected, and a session's until its session's
    expiry. Each now looks its credential up again within
    WS_CREDENTIAL_CHECK_SECONDS; a socket whose credential holds stays."""
    settings.WS_CREDENTIAL_CHECK_SECONDS = 1
    token_socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    session_socket, _, _ = await open_socket(await sync_to_async(session_cookie)(alice), ORIGIN, HOST)
    staying, _, _ = await open_socket(await sync_to_async(token_header)(bob))
    for socket in (token_socket, session_socket, staying):
        assert (await socket.receive_json_from())["type"] == "hello"
    await sync_to_async(delete_behind_djangos_back)(Token, user=alice)
    assert await token_socket.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    await sync_to_async(delete_behind_djangos_back)(Session, session_key__isnull=False)
    assert await session_socket.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    assert await staying.receive_nothing(timeout=2)  # two checks at least
    await staying.send_json_to({"type": "ping", "id": "still"})
    assert await staying.receive_json_from() == {"type": "pong", "id": "still"}


async def test_a_credential_check_the_database_cannot_answer_keeps_the_socket(
    open_socket, alice: User, settings, monkeypatch, caplog
) -> None:
    """The database away is no reason to sign anyone out: the socket stays,
    its checks are put off with one WARNING (not one per socket per check),
    and the first check that is answered closes it if its token is gone."""
    settings.WS_CREDENTIAL_CHECK_SECONDS = 1
    monkeypatch.setattr(consumers, "_next_check_warning", 0.0)
    socket, _, _ = await open_socket(await sync_to_async(token_header)(alice))
    await socket.receive_json_from()
    credentials_that_hold = services.credentials_that_hold
    checks = 0

    def database_down(**kwargs: Any) -> Any:
        nonlocal checks
        checks += 1
        raise OperationalError("the database is away")

    monkeypatch.setattr(services, "credentials_that_hold", database_down)
    await sync_to_async(delete_behind_djangos_back)(Token, user=alice)
    with caplog.at_level(logging.WARNING, logger="live.consumers"):
        assert await socket.receive_nothing(timeout=4)
    assert checks >= 2
    put_off = [record for record in caplog.records if "credential checks put off" in record.getMessage()]
    assert len(put_off) == 1, caplog.records
    monkeypatch.setattr(services, "credentials_that_hold", credentials_that_hold)
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


@pytest.mark.parametrize(
    ("change", "holds"),
    [
        ("nothing", True),
        ("logged out", False),
        ("new password", False),
        ("deactivated", False),
        ("deleted", False),
        ("another user's session", False),
        ("signed with a fallback secret", True),
    ],
)
def test_a_session_signs_in_as_djangos_get_user_decides(alice: User, bob: User, settings, change, holds) -> None:
    """What a session socket's check reads (live/services.py), one case per
    way a session stops signing its user in; the answer is what an HTTP
    request with that cookie gets."""
    client = Client()
    if change == "signed with a fallback secret":
        settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "an-old-secret-" + "x" * 40, []
    client.force_login(alice)
    key = client.cookies["sessionid"].value
    user_id = alice.pk
    if change == "logged out":
        delete_behind_djangos_back(Session, session_key=key)
    elif change == "new password":
        User.objects.filter(pk=alice.pk).update(password="md5$salt$0123456789abcdef0123456789abcdef")
    elif change == "deactivated":
        User.objects.filter(pk=alice.pk).update(is_active=False)
    elif change == "deleted":
        delete_behind_djangos_back(User, pk=alice.pk)
    elif change == "another user's session":
        user_id = bob.pk
    elif change == "signed with a fallback secret":
        settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
        settings.SECRET_KEY = "a-new-secret-" + "y" * 40
    assert bool(services.credentials_that_hold(sessions=[(user_id, key)]).sessions) is holds
    if change != "another user's session":
        assert (client.get("/api/auth/me/").status_code == 200) is holds


def test_a_token_signs_in_while_its_row_and_its_user_are_there(alice: User, bob: User) -> None:
    def holds(user: User, key: str) -> bool:
        return services.credentials_that_hold(tokens=[(user.pk, key)]).tokens == {(user.pk, key)}

    key = Token.objects.create(user=alice).key
    assert holds(alice, key) and not holds(bob, key)
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert not holds(alice, key)
    User.objects.filter(pk=alice.pk).update(is_active=True)
    Token.objects.filter(key=key).delete()
    rotated = Token.objects.create(user=alice).key
    assert not holds(alice, key) and holds(alice, rotated)


def test_a_batch_of_checks_is_three_queries_however_many_sockets(
    alice: User, bob: User, django_assert_num_queries
) -> None:
    """The checks due in the same second share one trip to the database
    (live/consumers.py CredentialChecks): tokens, sessions, their users."""
    tokens, sessions = [], []
    for user in (alice, bob):
        tokens.append((user.pk, Token.objects.create(user=user).key))
        for _ in range(3):
            client = Client()
            client.force_login(user)
            sessions.append((user.pk, client.cookies["sessionid"].value))
    sessions.append((alice.pk, sessions[-1][1]))  # bob's session, said to be alice's
    with django_assert_num_queries(3):
        holding = services.credentials_that_hold(tokens=tokens, sessions=sessions)
    assert holding.tokens == set(tokens)
    assert set(holding.sessions) == set(sessions[:-1])
