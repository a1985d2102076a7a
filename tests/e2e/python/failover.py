#!/usr/bin/env python3
"""Failover through a load balancer with the official centrifuge-python SDK (run by tests/load_balancer.rs).

  1. connect through HERALD_WS_URL (nginx in front of two Herald nodes), subscribe to HERALD_CHANNEL
     (recoverable + positioned)
  2. publish n=1..3 through HERALD_API_URL, expect them live with contiguous offsets
  3. print "STEP failover <client id>": the test freezes the node this client is on, publishes n=4..7
     through the other node and kills the frozen one (kill -9)
  4. the SDK reconnects by itself through nginx; expect the resubscribe to report was_recovering and
     recovered, and exactly n=4..7 replayed in order with contiguous offsets; then publish n=8 and expect
     it live right after n=7 (no duplicates)

Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL; HERALD_E2E_TIMEOUT (s, default 60).
Prints PASS and exits 0 on success; exits 1 on a failed check or timeout.
"""

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        print(f"failover.py: {name} is not set", file=sys.stderr)
        sys.exit(2)
    return value


WS_URL = env("HERALD_WS_URL")
API_URL = env("HERALD_API_URL").rstrip("/")
API_KEY = env("HERALD_API_KEY")
CHANNEL = env("HERALD_CHANNEL")
TIMEOUT = float(os.environ.get("HERALD_E2E_TIMEOUT", "60"))
T0 = time.monotonic()
EVENTS = []


def log(line: str) -> None:
    EVENTS.append(f"{int((time.monotonic() - T0) * 1000)}ms {line}")


class CheckError(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def publish_blocking(n: int) -> dict:
    """Publishes {n} with an idempotency key, retrying (the balancer may try a dead node first)."""
    body = json.dumps({"channel": CHANNEL, "data": {"n": n}, "idempotency_key": f"{CHANNEL}-{n}"}).encode()
    last_error = None
    for _ in range(20):
        request = urllib.request.Request(
            f"{API_URL}/publish",
            data=body,
            headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
            method="POST",
        )
        try:
            # No proxy from the environment: the API is on loopback.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=10) as response:
                result = json.loads(response.read()).get("result") or {}
                if result.get("offset", 0) > 0:
                    return result
                last_error = f"no offset in {result}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            last_error = repr(error)
        time.sleep(0.1)
    raise CheckError(f"publish n={n} failed: {last_error}")


async def publish(n: int) -> dict:
    result = await asyncio.get_running_loop().run_in_executor(None, publish_blocking, n)
    log(f"published n={n} offset={result['offset']}")
    return result


class State:
    def __init__(self) -> None:
        self.connected: asyncio.Queue = asyncio.Queue()
        self.subscribed: asyncio.Queue = asyncio.Queue()
        self.publications: asyncio.Queue = asyncio.Queue()
        self.subscriptions = 0
        self.fatal: asyncio.Future = asyncio.get_running_loop().create_future()


class ClientEvents(ClientEventHandler):
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        log(f"connecting code={ctx.code} reason={ctx.reason}")

    async def on_connected(self, ctx: ConnectedContext) -> None:
        log(f"connected {ctx.client}")
        self.state.connected.put_nowait(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.state.subscriptions += 1
        log(f"subscribed was_recovering={ctx.was_recovering} recovered={ctx.recovered} pos={ctx.stream_position}")
        self.state.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        if not self.state.fatal.done():
            self.state.fatal.set_exception(CheckError(f"unsubscribed code={ctx.code} reason={ctx.reason}"))

    async def on_publication(self, ctx: PublicationContext) -> None:
        data = ctx.pub.data
        n = data.get("n") if isinstance(data, dict) else None
        log(f"publication n={n} offset={ctx.pub.offset}")
        self.state.publications.put_nowait((n, ctx.pub.offset, self.state.subscriptions))


async def take(queue: asyncio.Queue, what: str):
    try:
        return await asyncio.wait_for(queue.get(), 20)
    except asyncio.TimeoutError:
        raise CheckError(f"timed out waiting for {what}") from None


async def scenario(state: State, client: Client) -> None:
    sub = client.new_subscription(CHANNEL, events=SubEvents(state), recoverable=True, positioned=True)
    await client.connect()
    await sub.subscribe()
    first = await take(state.connected, "the first connection")
    initial = await take(state.subscribed, "the first subscribe")
    check(initial.recoverable and initial.positioned, "the subscription is not recoverable and positioned")
    epoch = initial.stream_position.epoch
    last = initial.stream_position.offset

    for n in range(1, 4):
        result = await publish(n)
        got = await take(state.publications, f"live n={n}")
        check(got[0] == n and got[1] == last + 1 and got[1] == result["offset"],
              f"live: expected n={n} at offset {last + 1}, got {got}")
        last = got[1]

    print(f"STEP failover {first.client}", flush=True)
    again = await take(state.subscribed, "the resubscribe after the node was killed")
    check(again.was_recovering and again.recovered, f"resubscribe not recovered: {again}")
    check(again.stream_position.epoch == epoch, f"epoch changed from {epoch}: {again.stream_position}")
    second = await take(state.connected, "the reconnection")
    check(second.client != first.client, "the same client id after reconnecting")
    for n in range(4, 8):
        got = await take(state.publications, f"recovered n={n}")
        check(got == (n, last + 1, 2), f"recovered: expected n={n} at offset {last + 1} after the resubscribe, got {got}")
        last = got[1]
    await publish(8)
    got = await take(state.publications, "live n=8")
    check(got[0] == 8 and got[1] == last + 1, f"after n=7 expected live n=8, got {got}")


async def main() -> int:
    state = State()
    client = Client(
        WS_URL,
        events=ClientEvents(state),
        min_reconnect_delay=0.2,
        max_reconnect_delay=2.0,
        timeout=10.0,
        proxy=None,
    )
    task = asyncio.ensure_future(scenario(state, client))
    error = None
    try:
        await asyncio.wait({task, state.fatal}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        elif state.fatal.done():
            state.fatal.result()
        else:
            raise CheckError(f"overall timeout of {TIMEOUT:g} s")
    except Exception as e:  # noqa: BLE001 - every failure is reported
        error = f"{type(e).__name__}: {e}"
    finally:
        task.cancel()
        try:
            await asyncio.wait_for(client.disconnect(), 2)
        except BaseException:  # noqa: BLE001
            pass
    print(json.dumps({"sdk": "centrifuge-python", "ok": error is None, "error": error, "events": EVENTS}))
    if error is None:
        print("PASS: failover through the load balancer (centrifuge-python)")
        return 0
    print(f"FAIL: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    rc = asyncio.run(main())
    sys.stdout.flush()
    os._exit(rc)
