#!/usr/bin/env python3
"""End-to-end recovery scenario for Herald using the official centrifuge-python SDK.

  1. connect anonymously, subscribe to HERALD_CHANNEL (recoverable + positioned)
  2. publish n=1..3 through the HTTP API, expect them live with contiguous offsets
  3. force a reconnect (API disconnect, code 3011); while the client is away,
     publish n=4..7
  4. expect the resubscribe to report was_recovering and recovered, and exactly
     n=4..7 replayed in order with contiguous offsets; then publish n=8 live and
     expect it right after n=7 (proves there were no duplicates)

Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL
     (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 30;
     HERALD_PROTOCOL=protobuf: the SDK in Protobuf mode.
Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
"""

import asyncio
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    PublicationContext,
    SubscribedContext,
    SubscribingContext,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

T0 = time.monotonic()

# HERALD_PROTOCOL=protobuf runs the same scenario in the SDK's Protobuf mode.
PROTOBUF = os.environ.get("HERALD_PROTOCOL") == "protobuf"


def elapsed_ms() -> int:
    return int((time.monotonic() - T0) * 1000)


# ------------------------------------------------------------------ config --


def read_env() -> dict:
    names = ["HERALD_WS_URL", "HERALD_API_URL", "HERALD_API_KEY", "HERALD_CHANNEL"]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"recover.py: missing required env var(s): {', '.join(missing)}", file=sys.stderr)
        print(
            "usage: HERALD_WS_URL=ws://127.0.0.1:PORT/connection/websocket "
            "HERALD_API_URL=http://127.0.0.1:PORT/api HERALD_API_KEY=... "
            "HERALD_CHANNEL=ns:chan python3 recover.py",
            file=sys.stderr,
        )
        sys.exit(2)
    if not os.environ["HERALD_WS_URL"].startswith(("ws://", "wss://")):
        print(f"recover.py: HERALD_WS_URL must be a ws:// or wss:// URL, got {os.environ['HERALD_WS_URL']!r}",
              file=sys.stderr)
        sys.exit(2)
    if not os.environ["HERALD_API_URL"].startswith(("http://", "https://")):
        print(f"recover.py: HERALD_API_URL must be an http:// or https:// URL, got {os.environ['HERALD_API_URL']!r}",
              file=sys.stderr)
        sys.exit(2)
    raw_timeout = os.environ.get("HERALD_E2E_TIMEOUT", "30")
    try:
        timeout = float(raw_timeout)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        print(f"recover.py: HERALD_E2E_TIMEOUT must be a positive number of seconds, got {raw_timeout!r}",
              file=sys.stderr)
        sys.exit(2)
    return {
        "ws_url": os.environ["HERALD_WS_URL"],
        "api_url": os.environ["HERALD_API_URL"].rstrip("/"),
        "api_key": os.environ["HERALD_API_KEY"],
        "channel": os.environ["HERALD_CHANNEL"],
        "timeout": timeout,
    }


CFG = read_env()

SUMMARY = {
    "sdk": "centrifuge-python",
    "ok": False,
    "phase": "init",
    "channel": CFG["channel"],
    "client_ids": [],
    "events": [],
    "initial_position": None,
    "published": [],
    "received": [],
    "resubscribe": None,
    "error": None,
}

_printed = threading.Lock()


def emit_summary(ok: bool, message: str = None) -> None:
    """Prints the result exactly once (the watchdog thread may race the main thread)."""
    if not _printed.acquire(blocking=False):
        return
    SUMMARY["ok"] = ok
    SUMMARY["elapsed_ms"] = elapsed_ms()
    if not ok:
        SUMMARY["error"] = message
        print(f"FAIL [{SUMMARY['phase']}]: {message}", file=sys.stderr)
    print(json.dumps(SUMMARY, default=str))
    if ok:
        print("PASS: recovery scenario (centrifuge-python)")
    sys.stdout.flush()
    sys.stderr.flush()


def log(ev: str) -> None:
    SUMMARY["events"].append(f"{elapsed_ms()}ms {ev}")


class CheckError(Exception):
    pass


def check(cond: bool, message: str) -> None:
    if not cond:
        raise CheckError(message)


async def within(aw, seconds: float, what: str, hint=None):
    try:
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError:
        extra = f" ({hint()})" if hint else ""
        raise CheckError(f"timed out after {seconds:g} s waiting for {what}{extra}") from None


# --------------------------------------------------------------- HTTP API --

# Never route the API calls through an environment proxy: the server is local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _api_blocking(method: str, body: dict) -> dict:
    url = f"{CFG['api_url']}/{method}"
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": CFG["api_key"]},
    )
    try:
        with _OPENER.open(req, timeout=5) as resp:
            status, text = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        raise CheckError(f"HTTP API {url} returned HTTP {e.code}: {text[:300]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CheckError(f"HTTP API {url} request failed: {reason}") from None
    if status != 200:
        raise CheckError(f"HTTP API {url} returned HTTP {status}: {text[:300]!r}")
    try:
        reply = json.loads(text)
    except ValueError:
        raise CheckError(f"HTTP API {url} returned non-JSON body: {text[:300]!r}") from None
    if not isinstance(reply, dict):
        raise CheckError(f"HTTP API {method} reply is not an object: {text[:300]}")
    if reply.get("error"):
        raise CheckError(f"HTTP API {method} returned error: {json.dumps(reply['error'])}")
    if not isinstance(reply.get("result"), dict):
        raise CheckError(f"HTTP API {method} reply has no \"result\" object: {text[:300]}")
    return reply["result"]


async def api(method: str, body: dict) -> dict:
    return await asyncio.to_thread(_api_blocking, method, body)


async def publish(n: int) -> dict:
    result = await api("publish", {"channel": CFG["channel"], "data": {"n": n}})
    offset = result.get("offset")
    check(
        isinstance(offset, int) and not isinstance(offset, bool) and offset > 0,
        f"publish n={n}: result has no positive integer offset ({json.dumps(result)}); "
        "the namespace of HERALD_CHANNEL must have history enabled",
    )
    epoch = result.get("epoch")
    check(isinstance(epoch, str) and epoch != "", f"publish n={n}: result has no epoch ({json.dumps(result)})")
    rec = {"n": n, "offset": offset, "epoch": epoch}
    SUMMARY["published"].append(rec)
    log(f"api publish n={n} -> offset {offset}")
    return rec


# ----------------------------------------------------------------- events --


class Signal:
    """Hands the next event satisfying a predicate to whoever waits for it."""

    def __init__(self) -> None:
        self._waiters = []

    def next(self, pred=lambda _ctx: True) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return fut

    def fire(self, ctx) -> None:
        keep = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred(ctx):
                fut.set_result(ctx)
            else:
                keep.append((pred, fut))
        self._waiters = keep


class State:
    def __init__(self) -> None:
        self.connected = Signal()
        self.connecting = Signal()
        self.disconnected = Signal()
        self.subscribed = Signal()
        self.pubs: asyncio.Queue = asyncio.Queue()
        self.subscribed_count = 0
        self.last_error = "none"
        self.fatal: asyncio.Future = asyncio.get_running_loop().create_future()


class ClientEvents(ClientEventHandler):
    def __init__(self, st: State) -> None:
        self.st = st

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        log(f"connecting code={ctx.code} reason={ctx.reason}")
        self.st.connecting.fire(ctx)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        log(f"connected client={ctx.client} version={ctx.version}")
        SUMMARY["client_ids"].append(ctx.client)
        self.st.connected.fire(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        log(f"disconnected code={ctx.code} reason={ctx.reason}")
        self.st.disconnected.fire(ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.st.last_error = f"{ctx.code} {type(ctx.error).__name__}: {ctx.error}"
        log(f"client error {self.st.last_error}")


class SubEvents(SubscriptionEventHandler):
    def __init__(self, st: State) -> None:
        self.st = st

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        log(f"subscribing code={ctx.code} reason={ctx.reason}")

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.st.subscribed_count += 1
        log(
            f"subscribed was_recovering={ctx.was_recovering} recovered={ctx.recovered} "
            f"pos={ctx.stream_position}"
        )
        self.st.subscribed.fire(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        log(f"unsubscribed code={ctx.code} reason={ctx.reason}")
        if SUMMARY["phase"] != "disconnect" and not self.st.fatal.done():
            self.st.fatal.set_exception(CheckError(
                f"subscription to {CFG['channel']} ended: unsubscribed code={ctx.code} reason={ctx.reason}"
            ))

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.st.last_error = f"subscription {ctx.code} {type(ctx.error).__name__}: {ctx.error}"
        log(self.st.last_error)

    async def on_publication(self, ctx: PublicationContext) -> None:
        data = ctx.pub.data
        if PROTOBUF:
            # In Protobuf, data is the JSON text's bytes.
            data = json.loads(data)
        n = data.get("n") if isinstance(data, dict) else None
        after = self.st.subscribed_count >= 2
        SUMMARY["received"].append({"n": n, "offset": ctx.pub.offset, "after_resubscribe": after})
        log(f"publication n={n} offset={ctx.pub.offset}")
        self.st.pubs.put_nowait({"data": data, "offset": ctx.pub.offset, "after_resubscribe": after})


# ------------------------------------------------------------------- main --


async def scenario(st: State, client: Client) -> None:
    ch = CFG["channel"]

    def last_error():
        return f"last error: {st.last_error}"

    sub = client.new_subscription(ch, events=SubEvents(st), recoverable=True, positioned=True)

    # ---- 1. connect + subscribe
    SUMMARY["phase"] = "connect+subscribe"
    first_connected = st.connected.next()
    first_subscribed = st.subscribed.next()

    async def connect_and_subscribe():
        # connect() returns after the first attempt (which may itself take up to `timeout`).
        await client.connect()
        await sub.subscribe()
        return await first_connected

    cctx = await within(connect_and_subscribe(), 10, f"connection to {CFG['ws_url']}", last_error)
    client_id = cctx.client
    check(isinstance(client_id, str) and client_id != "", f"connected event has no client id: {cctx}")
    sctx = await within(first_subscribed, 5, f"subscribed event for {ch}", last_error)
    check(sctx.recoverable is True,
          f"first subscribe: recoverable={sctx.recoverable}, expected True (namespace must allow recovery)")
    check(sctx.positioned is True,
          f"first subscribe: positioned={sctx.positioned}, expected True (namespace must allow positioning)")
    check(sctx.was_recovering is False, f"first subscribe: was_recovering={sctx.was_recovering}, expected False")
    check(sctx.stream_position is not None and sctx.stream_position.epoch != "",
          f"first subscribe: missing stream position/epoch: {sctx.stream_position}")
    epoch = sctx.stream_position.epoch
    last_offset = sctx.stream_position.offset
    SUMMARY["initial_position"] = {"offset": last_offset, "epoch": epoch}

    # ---- 2. three live publications
    SUMMARY["phase"] = "live publications n=1..3"
    for n in range(1, 4):
        rec = await publish(n)
        check(rec["epoch"] == epoch, f"publish n={n}: API epoch {rec['epoch']} != subscribe epoch {epoch}")
        p = await within(st.pubs.get(), 5, f"publication n={n}")
        check(p["data"] == {"n": n}, f"live publication: expected data {{'n': {n}}}, got {p['data']!r}")
        check(p["offset"] == last_offset + 1,
              f"live publication n={n}: offset {p['offset']}, expected {last_offset + 1} (contiguous after {last_offset})")
        check(p["offset"] == rec["offset"], f"live publication n={n}: offset {p['offset']} != API offset {rec['offset']}")
        last_offset = p["offset"]
    offset_before_disconnect = last_offset

    # ---- 3. force reconnect, publish while away
    SUMMARY["phase"] = "force reconnect"
    gone = st.connecting.next(lambda c: c.code == 3011)
    reconnected = st.connected.next()
    resubscribed = st.subscribed.next()
    dres = await api("disconnect", {
        "user": "",
        "client": client_id,
        "disconnect": {"code": 3011, "reason": "force reconnect"},
    })
    log(f"api disconnect -> {json.dumps(dres)}")
    gctx = await within(gone, 5, "the on_connecting event with code 3011 after /api/disconnect",
                        lambda: f"client state {client.state}")
    check(gctx.code == 3011, f"connecting code {gctx.code}, expected 3011")

    SUMMARY["phase"] = "publish while away n=4..7"
    missed = []
    for n in range(4, 8):
        check(not reconnected.done(),
              f"client reconnected before n={n} was published; the test needs the client away "
              "(reconnect delay 1.5-2 s) - publishing too slow?")
        missed.append(await publish(n))
    check(not reconnected.done(), "client reconnected before all of n=4..7 were published; recovery not exercised")
    check(st.pubs.empty(), f"received {st.pubs.qsize()} publication(s) while disconnected")
    for i, rec in enumerate(missed):
        check(rec["epoch"] == epoch, f"publish n={rec['n']}: epoch changed from {epoch} to {rec['epoch']}")
        check(rec["offset"] == offset_before_disconnect + 1 + i,
              f"publish n={rec['n']}: API offset {rec['offset']}, expected {offset_before_disconnect + 1 + i}")

    # ---- 4. resubscribe with recovery
    SUMMARY["phase"] = "reconnect+recover"
    c2 = await within(reconnected, 8, "reconnect after the forced disconnect", last_error)
    r = await within(resubscribed, 5, "resubscribe after reconnect", last_error)
    SUMMARY["resubscribe"] = {
        "new_client": c2.client,
        "was_recovering": r.was_recovering,
        "recovered": r.recovered,
        "stream_position": None if r.stream_position is None
        else {"offset": r.stream_position.offset, "epoch": r.stream_position.epoch},
    }
    check(r.was_recovering is True, f"resubscribe: was_recovering={r.was_recovering}, expected True")
    check(r.recovered is True, f"resubscribe: recovered={r.recovered}, expected True")
    check(r.stream_position is not None and r.stream_position.epoch == epoch,
          f"resubscribe: epoch {r.stream_position and r.stream_position.epoch}, expected unchanged {epoch}")
    check(r.stream_position.offset == offset_before_disconnect,
          f"resubscribe: recovered reply offset {r.stream_position.offset}, expected the client's position "
          f"{offset_before_disconnect} (protocol §8.2: recovered => offset echoes the request offset)")

    for n in range(4, 8):
        p = await within(st.pubs.get(), 5, f"recovered publication n={n}")
        check(p["after_resubscribe"], f"publication {p['data']!r} arrived before the resubscribe")
        check(p["data"] == {"n": n}, f"recovered publication: expected data {{'n': {n}}}, got {p['data']!r}")
        check(p["offset"] == last_offset + 1,
              f"recovered publication n={n}: offset {p['offset']}, expected {last_offset + 1} (contiguous)")
        last_offset = p["offset"]

    # ---- 5. one more live publication: the next thing we see must be n=8 (no duplicates)
    SUMMARY["phase"] = "live publication after recovery"
    rec8 = await publish(8)
    p8 = await within(st.pubs.get(), 5, "live publication n=8 after recovery")
    check(p8["data"] == {"n": 8},
          f"after recovered n=7 expected live n=8, got {p8['data']!r} offset {p8['offset']} "
          "(duplicate or stray publication)")
    check(p8["offset"] == last_offset + 1 and p8["offset"] == rec8["offset"],
          f"live publication n=8: offset {p8['offset']}, expected {last_offset + 1} (API said {rec8['offset']})")
    check(len(SUMMARY["client_ids"]) == 2, f"expected exactly 2 connections, saw {len(SUMMARY['client_ids'])}")

    # ---- clean disconnect
    SUMMARY["phase"] = "disconnect"
    bye = st.disconnected.next()
    await within(client.disconnect(), 2, "client.disconnect()")
    await within(bye, 2, "on_disconnected event")


async def main() -> int:
    st = State()
    client = Client(
        CFG["ws_url"],
        events=ClientEvents(st),
        # Long enough that the client is surely away while we publish n=4..7.
        min_reconnect_delay=1.5,
        max_reconnect_delay=2.0,
        timeout=5.0,
        proxy=None,  # connect directly, ignore any proxy environment
        use_protobuf=PROTOBUF,
    )
    task = asyncio.ensure_future(scenario(st, client))
    ok, message = False, None
    try:
        # Whichever ends first: the scenario, or a fatal event (subscription lost).
        await asyncio.wait({task, st.fatal}, timeout=CFG["timeout"], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            ok = True
        elif st.fatal.done():
            st.fatal.result()
        else:
            raise CheckError(f"overall timeout of {CFG['timeout']:g} s exceeded")
    except CheckError as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 - report anything unexpected as a failure
        message = f"unexpected error: {type(e).__name__}: {e}"
    finally:
        if not task.done():
            task.cancel()
            try:
                await asyncio.wait_for(task, 2)
            except BaseException:  # noqa: BLE001
                pass
        if client.state.value != "disconnected":
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except BaseException:  # noqa: BLE001
                pass
    emit_summary(ok, message)
    return 0 if ok else 1


def watchdog() -> None:
    # Last resort if the event loop itself is stuck: never hang past the timeout.
    time.sleep(CFG["timeout"] + 8)
    SUMMARY["phase"] += " (watchdog)"
    emit_summary(False, f"hard watchdog fired after {CFG['timeout'] + 8:g} s; event loop stuck")
    os._exit(1)


if __name__ == "__main__":
    threading.Thread(target=watchdog, daemon=True).start()
    rc = asyncio.run(main())
    sys.stdout.flush()
    # os._exit: don't wait for a possibly stuck executor thread (urllib) at interpreter exit.
    os._exit(rc)
