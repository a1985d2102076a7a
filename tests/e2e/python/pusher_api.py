#!/usr/bin/env python3
"""Herald's Pusher Channels adapter driven by the `pusher` Python server library (pusher-http-python 3.3)
and a raw Pusher-protocol WebSocket client (run by tests/pusher_sdk.rs).

  1. connect to /app/{key}?protocol=7&client=python&version=1 and read pusher:connection_established
     (data is a JSON string with socket_id <digits>.<digits> and a non-zero activity_timeout)
  2. subscribe `news`, and `private-py` with the auth string from the library's authenticate(channel, socket_id);
     expect pusher_internal:subscription_succeeded for both
  3. trigger('news', 'ev', {'n': 1}): the client receives it
  4. trigger_batch with one event to `news` and one to `private-py`: the client receives both
  5. channels_info() lists both channels; channel_info('news', ['subscription_count']) → occupied, count 1
     (the library signs its GETs with body_md5 of the empty body)
  6. presence: subscribe `presence-py` with auth and channel_data from authenticate(channel, socket_id,
     {'user_id': 7, 'user_info': …}) (the library's json.dumps, with spaces, is signed and sent as is; the numeric
     user_id comes back as "7"); pusher_internal:subscription_succeeded carries the roster {"presence": {"ids":
     ["7"], "hash": {"7": info}, "count": 1}}; users_info → [{"id": "7"}]; channel_info(['user_count']) →
     occupied, 1; channels_info('presence-', ['user_count']) → presence-py 1; users_info('news') → PusherBadRequest
  7. a library built with a wrong secret: trigger and channels_info raise PusherBadAuth (HTTP 401)
  8. pusher:ping is answered with pusher:pong, as the next frame (nothing from step 7 was delivered)

Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID (numeric: the library requires it),
     HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET, HERALD_API_URL, HERALD_API_KEY (read for parity with pusher.js; this
     scenario does not use Herald's own API); HERALD_E2E_TIMEOUT: overall timeout in seconds, default 60.
Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
exit 2 on a missing or malformed variable.
"""

import asyncio
import json
import os
import re
import sys
import time

import pusher
from pusher.errors import PusherBadAuth, PusherBadRequest
from websockets.asyncio.client import connect

T0 = time.monotonic()
EVENTS = []

# Bound for every single wait, in seconds.
WAIT = 10.0


def log(line: str) -> None:
    EVENTS.append(f"{int((time.monotonic() - T0) * 1000)}ms {line}")


def read_env() -> dict:
    names = [
        "HERALD_PUSHER_HOST", "HERALD_PUSHER_PORT", "HERALD_PUSHER_APP_ID", "HERALD_PUSHER_KEY",
        "HERALD_PUSHER_SECRET", "HERALD_API_URL", "HERALD_API_KEY",
    ]
    missing = [n for n in names if not os.environ.get(n)]

    def fail(message: str) -> None:
        print(f"pusher_api.py: {message}", file=sys.stderr)
        sys.exit(2)

    if missing:
        fail(f"missing required env var(s): {', '.join(missing)}")
    port = os.environ["HERALD_PUSHER_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"HERALD_PUSHER_PORT must be a TCP port, got {port!r}")
    app_id = os.environ["HERALD_PUSHER_APP_ID"]
    if not app_id.isdigit():
        fail(f"HERALD_PUSHER_APP_ID must be numeric (the pusher library rejects other ids), got {app_id!r}")
    raw_timeout = os.environ.get("HERALD_E2E_TIMEOUT", "60")
    try:
        timeout = float(raw_timeout)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        fail(f"HERALD_E2E_TIMEOUT must be a positive number of seconds, got {raw_timeout!r}")
    return {
        "host": os.environ["HERALD_PUSHER_HOST"],
        "port": int(port),
        "app_id": app_id,
        "key": os.environ["HERALD_PUSHER_KEY"],
        "secret": os.environ["HERALD_PUSHER_SECRET"],
        "timeout": timeout,
    }


CFG = read_env()


class CheckError(Exception):
    pass


def check(cond: bool, message: str) -> None:
    if not cond:
        raise CheckError(message)


def server_library(secret: str) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=CFG["app_id"], key=CFG["key"], secret=secret, ssl=False, host=CFG["host"], port=CFG["port"],
        timeout=WAIT,
    )


async def call(what: str, method, *args):
    """Runs a (blocking) library call off the event loop; its result, or a CheckError naming the call."""
    try:
        result = await asyncio.wait_for(asyncio.to_thread(method, *args), WAIT + 1)
    except asyncio.TimeoutError:
        raise CheckError(f"{what}: no answer within {WAIT:g} s") from None
    except Exception as e:
        raise CheckError(f"{what} failed: {type(e).__name__}: {e}") from None
    log(f"{what} -> {json.dumps(result)}")
    return result


async def rejected(what: str, method, *args) -> Exception:
    """Runs a library call that must fail; returns the exception it raised."""
    try:
        result = await asyncio.wait_for(asyncio.to_thread(method, *args), WAIT + 1)
    except asyncio.TimeoutError:
        raise CheckError(f"{what}: no answer within {WAIT:g} s") from None
    except Exception as e:
        log(f"{what} -> {type(e).__name__}: {e}")
        return e
    raise CheckError(f"{what}: expected an error, got {json.dumps(result)}")


def decoded(data):
    """Event data as the client sees it: a JSON string is decoded, anything else is kept."""
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


class RawClient:
    """A Pusher protocol v7 client on a plain WebSocket: frames in arrival order, server pings answered."""

    def __init__(self) -> None:
        self.url = f"ws://{CFG['host']}:{CFG['port']}/app/{CFG['key']}?protocol=7&client=python&version=1"
        self.frames: asyncio.Queue = asyncio.Queue()
        self.ws = None
        self.reader = None

    async def open(self) -> None:
        try:
            self.ws = await connect(self.url, open_timeout=WAIT, proxy=None)
        except Exception as e:
            raise CheckError(f"cannot connect to {self.url}: {type(e).__name__}: {e}") from None
        log(f"connected to {self.url}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                log(f"<- {raw if isinstance(raw, str) else repr(raw)}")
                try:
                    frame = json.loads(raw)
                except ValueError:
                    frame = {"event": None, "unparsable": raw}
                if isinstance(frame, dict) and frame.get("event") == "pusher:ping":
                    await self.send({"event": "pusher:pong", "data": {}})
                    continue
                self.frames.put_nowait(frame)
        except Exception as e:
            log(f"reader stopped: {type(e).__name__}: {e}")
        close = f"code={self.ws.close_code} reason={self.ws.close_reason!r}"
        log(f"connection closed {close}")
        self.frames.put_nowait({"event": None, "closed": close})

    async def send(self, frame: dict) -> None:
        text = json.dumps(frame)
        log(f"-> {text}")
        await self.ws.send(text)

    async def next(self, what: str) -> dict:
        try:
            frame = await asyncio.wait_for(self.frames.get(), WAIT)
        except asyncio.TimeoutError:
            raise CheckError(f"timed out after {WAIT:g} s waiting for {what}") from None
        check(isinstance(frame, dict) and "closed" not in frame and "unparsable" not in frame,
              f"waiting for {what}, got {json.dumps(frame)}")
        return frame

    async def expect(self, event: str, channel: str, data=None, what: str = None) -> dict:
        frame = await self.next(what or f"{event} on {channel}")
        check(frame.get("event") == event and frame.get("channel") == channel,
              f"expected {event} on {channel}, got {json.dumps(frame)}")
        if data is not None:
            check(decoded(frame.get("data")) == data,
                  f"{event} on {channel}: expected data {json.dumps(data)}, got {json.dumps(frame)}")
        return frame

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, WAIT)


async def scenario(client: RawClient) -> None:
    lib = server_library(CFG["secret"])

    # 1. Handshake.
    await client.open()
    hello = await client.next("pusher:connection_established")
    check(hello.get("event") == "pusher:connection_established",
          f"expected pusher:connection_established first, got {json.dumps(hello)}")
    check(isinstance(hello.get("data"), str), f"connection_established data must be a JSON string: {json.dumps(hello)}")
    established = json.loads(hello["data"])
    socket_id = established.get("socket_id")
    check(isinstance(socket_id, str) and re.fullmatch(r"\d+\.\d+", socket_id) is not None,
          f"socket_id must be <digits>.<digits>: {hello['data']}")
    timeout = established.get("activity_timeout")
    check(isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0,
          f"activity_timeout must be a positive integer: {hello['data']}")

    # 2. Subscriptions: public, and private with the library's auth string.
    await client.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
    await client.expect("pusher_internal:subscription_succeeded", "news")
    auth = lib.authenticate(channel="private-py", socket_id=socket_id)
    log(f"authenticate(private-py, {socket_id}) -> {json.dumps(auth)}")
    check(isinstance(auth, dict) and isinstance(auth.get("auth"), str), f"authenticate returned {auth!r}")
    await client.send({"event": "pusher:subscribe", "data": {"channel": "private-py", "auth": auth["auth"]}})
    await client.expect("pusher_internal:subscription_succeeded", "private-py")

    # 3. trigger.
    result = await call("trigger(news, ev, {n: 1})", lib.trigger, "news", "ev", {"n": 1})
    check(result == {}, f"trigger: expected the body {{}}, got {json.dumps(result)}")
    await client.expect("ev", "news", {"n": 1})

    # 4. trigger_batch to both channels: two events, one per channel (their relative order is not specified).
    batch = [
        {"channel": "news", "name": "batch-ev", "data": {"n": 2}},
        {"channel": "private-py", "name": "batch-ev", "data": {"n": 3}},
    ]
    await call("trigger_batch(news n=2, private-py n=3)", lib.trigger_batch, batch)
    got = {}
    for _ in range(2):
        frame = await client.next("the batch events")
        check(frame.get("event") == "batch-ev" and frame.get("channel") in ("news", "private-py")
              and frame["channel"] not in got, f"expected one batch-ev per channel, got {json.dumps(frame)}")
        got[frame["channel"]] = decoded(frame.get("data"))
    check(got == {"news": {"n": 2}, "private-py": {"n": 3}}, f"batch events carried {json.dumps(got)}")

    # 5. Channel queries (GETs signed with body_md5 of the empty body).
    channels = await call("channels_info()", lib.channels_info)
    listed = channels.get("channels") if isinstance(channels, dict) else None
    check(isinstance(listed, dict) and "news" in listed and "private-py" in listed,
          f"channels_info: expected news and private-py, got {json.dumps(channels)}")
    news = await call("channel_info(news, [subscription_count])", lib.channel_info, "news", ["subscription_count"])
    check(news.get("occupied") is True and news.get("subscription_count") == 1,
          f"channel_info(news): expected occupied with subscription_count 1, got {json.dumps(news)}")

    # 6. Presence: the library signs "socket_id:channel:channel_data" over its own serialisation of the user.
    user_info = {"name": "Py", "tags": ["e2e"]}
    auth = lib.authenticate(channel="presence-py", socket_id=socket_id,
                            custom_data={"user_id": 7, "user_info": user_info})
    log(f"authenticate(presence-py, {socket_id}, user 7) -> {json.dumps(auth)}")
    check(isinstance(auth, dict) and isinstance(auth.get("auth"), str) and isinstance(auth.get("channel_data"), str),
          f"authenticate returned {auth!r}")
    await client.send({"event": "pusher:subscribe", "data": {
        "channel": "presence-py", "auth": auth["auth"], "channel_data": auth["channel_data"]}})
    joined = await client.expect("pusher_internal:subscription_succeeded", "presence-py")
    check(isinstance(joined.get("data"), str), f"presence subscription_succeeded data must be a JSON string: "
          f"{json.dumps(joined)}")
    roster = {"presence": {"ids": ["7"], "hash": {"7": user_info}, "count": 1}}
    check(decoded(joined["data"]) == roster,
          f"presence subscription_succeeded: expected {json.dumps(roster)}, got {json.dumps(joined)}")
    users = await call("users_info(presence-py)", lib.users_info, "presence-py")
    check(users == {"users": [{"id": "7"}]}, f"users_info(presence-py): expected user 7, got {json.dumps(users)}")
    room = await call("channel_info(presence-py, [user_count])", lib.channel_info, "presence-py", ["user_count"])
    check(room.get("occupied") is True and room.get("user_count") == 1,
          f"channel_info(presence-py): expected occupied with user_count 1, got {json.dumps(room)}")
    rooms = await call("channels_info(presence-, [user_count])", lib.channels_info, "presence-", ["user_count"])
    check(rooms == {"channels": {"presence-py": {"user_count": 1}}},
          f"channels_info(presence-, [user_count]): expected presence-py with 1 user, got {json.dumps(rooms)}")
    error = await rejected("users_info(news)", lib.users_info, "news")
    check(isinstance(error, PusherBadRequest),
          f"users_info of a non-presence channel: expected PusherBadRequest (400), got {error!r}")

    # 7. A wrong secret is refused with 401, which the library raises as PusherBadAuth.
    forger = server_library(CFG["secret"] + "-wrong")
    error = await rejected("trigger with a wrong secret", forger.trigger, "news", "forged", {"n": 666})
    check(isinstance(error, PusherBadAuth), f"trigger with a wrong secret: expected PusherBadAuth (401), got {error!r}")
    error = await rejected("channels_info with a wrong secret", forger.channels_info)
    check(isinstance(error, PusherBadAuth),
          f"channels_info with a wrong secret: expected PusherBadAuth (401), got {error!r}")

    # 8. Ping/pong; the pong is the next frame, so nothing was delivered for the refused trigger.
    await client.send({"event": "pusher:ping", "data": {}})
    pong = await client.next("pusher:pong")
    check(pong.get("event") == "pusher:pong", f"expected pusher:pong, got {json.dumps(pong)}")

    await client.close()


async def main() -> int:
    client = RawClient()
    error = None
    try:
        await asyncio.wait_for(scenario(client), CFG["timeout"])
    except asyncio.TimeoutError:
        error = f"overall timeout of {CFG['timeout']:g} s"
    except CheckError as e:
        error = str(e)
    except Exception as e:  # an unexpected failure is still a FAIL with the log
        error = f"{type(e).__name__}: {e}"
    if error is not None and client.ws is not None:
        try:
            await asyncio.wait_for(client.ws.close(), 2)
        except Exception:
            pass
    print(json.dumps({"sdk": "pusher (python) + raw websocket", "ok": error is None, "error": error,
                      "events": EVENTS}))
    if error is None:
        print("PASS: the pusher server library 3.3 and a raw protocol-7 client work unchanged against Herald")
        return 0
    print(f"FAIL: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
