#!/usr/bin/env python3
"""Herald's server API through `cent`, Centrifugo's Python server library, unchanged: its whole method set,
once with the sync `Client` and once with the `AsyncClient`, each on its own channel.

Two centrifuge-python clients are connected anonymously (user ""): `target`, whom the API subscribes,
unsubscribes and refreshes, and `keeper`, who stays. Every call's result is checked against what Herald
must have done:

  publish (data, b64data, tags, idempotency key), broadcast, history (limit, since, reverse), history_remove,
  subscribe (info, data, an override keeping one client out of presence) and the `subscribe` push the
  client gets, presence and presence_stats,
  channels, info, unsubscribe, refresh (expire_at, then expired: the client is closed with 3005),
  disconnect with a whitelist (the whitelisted client stays), batch (sequential and parallel), and every
  Centrifugo PRO method (user status, blocking, token revocation, connections, devices, push
  notifications), which Herald answers with 104 "method not found".

Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL
     (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 60.
Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
"""

import asyncio
import base64
import json
import os
import sys
import time

import cent
from cent import dto
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelOptionsOverride,
    ChannelsRequest,
    CentApiResponseError,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
)


class CheckError(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckError(message)


def env():
    names = ["HERALD_WS_URL", "HERALD_API_URL", "HERALD_API_KEY", "HERALD_CHANNEL"]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"cent_api.py: missing env var(s): {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    return {
        "ws_url": os.environ["HERALD_WS_URL"],
        "api_url": os.environ["HERALD_API_URL"].rstrip("/"),
        "api_key": os.environ["HERALD_API_KEY"],
        "channel": os.environ["HERALD_CHANNEL"],
        "timeout": float(os.environ.get("HERALD_E2E_TIMEOUT", "60")),
    }


CFG = env()
WAIT = 5.0

# What Herald does not have (Centrifugo PRO features): each is answered with 104 "method not found".
PRO_METHODS = {
    "connections": dto.ConnectionsRequest,
    "update_user_status": dto.UpdateUserStatusRequest,
    "get_user_status": dto.GetUserStatusRequest,
    "delete_user_status": dto.DeleteUserStatusRequest,
    "block_user": dto.BlockUserRequest,
    "unblock_user": dto.UnblockUserRequest,
    "revoke_token": dto.RevokeTokenRequest,
    "invalidate_user_tokens": dto.InvalidateUserTokensRequest,
    "device_register": dto.DeviceRegisterRequest,
    "device_update": dto.DeviceUpdateRequest,
    "device_remove": dto.DeviceRemoveRequest,
    "device_list": dto.DeviceListRequest,
    "device_topic_list": dto.DeviceTopicListRequest,
    "device_topic_update": dto.DeviceTopicUpdateRequest,
    "user_topic_list": dto.UserTopicListRequest,
    "user_topic_update": dto.UserTopicUpdateRequest,
    "send_push_notification": dto.SendPushNotificationRequest,
    "update_push_status": dto.UpdatePushStatusRequest,
    "cancel_push": dto.CancelPushRequest,
}


class Events(ClientEventHandler):
    """A connected client's events, as queues a check can wait on."""

    def __init__(self):
        self.connected = asyncio.Queue()
        self.closes = asyncio.Queue()
        self.subscribed = asyncio.Queue()
        self.unsubscribed = asyncio.Queue()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.put_nowait(ctx.client)

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        # A close the client will reconnect after (code >= 3000), as opposed to its own first connect.
        if ctx.code >= 3000:
            self.closes.put_nowait(ctx.code)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        if ctx.code >= 3000:
            self.closes.put_nowait(ctx.code)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx.channel)


async def next_event(queue, what):
    try:
        return await asyncio.wait_for(queue.get(), WAIT)
    except asyncio.TimeoutError:
        raise CheckError(f"timed out waiting for {what}")


async def connected_client():
    events = Events()
    client = Client(CFG["ws_url"], events=events, proxy=None, min_reconnect_delay=0.1, max_reconnect_delay=0.3)
    await client.connect()
    client_id = await next_event(events.connected, "connect")
    return client, events, client_id


class Api:
    """One `cent` client, sync or async, behind the same awaitable calls."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "sync":
            self.client = cent.Client(CFG["api_url"], CFG["api_key"])
        else:
            self.client = AsyncClient(CFG["api_url"], CFG["api_key"])

    async def __call__(self, method, request):
        call = getattr(self.client, method)
        if self.kind == "sync":
            return await asyncio.to_thread(call, request)
        return await call(request)

    async def refused(self, method, request, code):
        try:
            await self(method, request)
        except CentApiResponseError as error:
            check(error.code == code, f"{self.kind} {method}: expected error {code}, got {error.code} {error.message}")
            return
        raise CheckError(f"{self.kind} {method}: expected error {code}, got a result")

    async def close(self):
        if self.kind == "sync":
            self.client.close()
        else:
            await self.client.close()


async def scenario(kind):
    api = Api(kind)
    channel = f"{CFG['channel']}-{kind}"
    target, target_events, target_id = await connected_client()
    keeper, keeper_events, keeper_id = await connected_client()
    try:
        # publish: data, b64data (must be JSON), tags, idempotency.
        first = await api("publish", PublishRequest(channel=channel, data={"n": 1}, tags={"k": "v"}))
        check(first.offset == 1 and first.epoch, f"{kind} publish: {first}")
        second = await api("publish", PublishRequest(
            channel=channel, data=None, b64data=base64.b64encode(b'{"n":2}').decode()))
        check(second.offset == 2, f"{kind} publish b64data: {second}")
        again = await api("publish", PublishRequest(channel=channel, data={"n": 3}, idempotency_key="k3"))
        repeat = await api("publish", PublishRequest(channel=channel, data={"n": 3}, idempotency_key="k3"))
        check(again.offset == 3 and repeat.offset == 3, f"{kind} idempotent publish: {again} then {repeat}")
        await api.refused("publish", PublishRequest(
            channel=channel, data=None, b64data=base64.b64encode(b"\xff\x00").decode()), 107)

        # broadcast: one response per channel, in order.
        other = f"{channel}-other"
        broadcast = await api("broadcast", BroadcastRequest(channels=[channel, other], data={"n": 4}))
        offsets = [r.result.offset for r in broadcast.responses]
        check(offsets == [4, 1], f"{kind} broadcast offsets: {offsets}")

        # history: all, limited, since, reversed.
        history = await api("history", HistoryRequest(channel=channel, limit=-1))
        check([p.data["n"] for p in history.publications] == [1, 2, 3, 4], f"{kind} history: {history}")
        check(history.publications[0].tags == {"k": "v"}, f"{kind} history tags: {history.publications[0]}")
        since = await api("history", HistoryRequest(
            channel=channel, limit=2, since=StreamPosition(offset=1, epoch=history.epoch)))
        check([p.offset for p in since.publications] == [2, 3], f"{kind} history since: {since}")
        backwards = await api("history", HistoryRequest(channel=channel, limit=2, reverse=True))
        check([p.offset for p in backwards.publications] == [4, 3], f"{kind} history reverse: {backwards}")

        # subscribe the target server-side with info and data, and the keeper with an override that
        # keeps it out of presence.
        await api("subscribe", SubscribeRequest(
            user="", client=target_id, channel=channel, info={"role": "viewer"}, data={"welcome": True}))
        subscribed = await next_event(target_events.subscribed, "the server-side subscribe push")
        check(subscribed.channel == channel and subscribed.data == {"welcome": True},
              f"{kind} subscribe push: {subscribed}")
        await api("subscribe", SubscribeRequest(
            user="", client=keeper_id, channel=channel,
            override=ChannelOptionsOverride(presence=cent.BoolValue(value=False))))
        await next_event(keeper_events.subscribed, "the keeper's subscribe push")
        presence = await api("presence", PresenceRequest(channel=channel))
        check(list(presence.presence) == [target_id], f"{kind} presence: {presence}")
        check(presence.presence[target_id].chan_info == {"role": "viewer"}, f"{kind} presence info: {presence}")
        stats = await api("presence_stats", PresenceStatsRequest(channel=channel))
        check(stats.num_clients == 1 and stats.num_users == 1, f"{kind} presence_stats: {stats}")
        channels = await api("channels", ChannelsRequest(pattern=f"{channel}*"))
        check(channel in channels.channels and channels.channels[channel].num_clients == 2,
              f"{kind} channels: {channels}")
        info = await api("info", InfoRequest())
        check(len(info.nodes) == 1 and info.nodes[0].num_clients >= 2, f"{kind} info: {info}")

        await api("unsubscribe", UnsubscribeRequest(user="", client=target_id, channel=channel))
        unsubscribed = await next_event(target_events.unsubscribed, "the server-side unsubscribe push")
        check(unsubscribed == channel, f"{kind} unsubscribe push: {unsubscribed}")

        # history_remove: publications gone, the stream's position kept.
        await api("history_remove", HistoryRemoveRequest(channel=channel))
        emptied = await api("history", HistoryRequest(channel=channel, limit=-1))
        check(emptied.publications == [] and emptied.offset == 4 and emptied.epoch == history.epoch,
              f"{kind} history after history_remove: {emptied}")

        # refresh: an expiry in the future keeps the connection; expired closes it with 3005.
        await api("refresh", RefreshRequest(user="", client=target_id, expire_at=int(time.time()) + 3600))
        await api("refresh", RefreshRequest(user="", client=target_id, expired=True))
        code = await next_event(target_events.closes, "the close after refresh expired=True")
        check(code == 3005, f"{kind} refresh expired: closed with {code}, expected 3005")
        target_id = await next_event(target_events.connected, "the target's reconnect")

        # disconnect every anonymous connection except the keeper.
        await api("disconnect", DisconnectRequest(
            user="", whitelist=[keeper_id], disconnect=cent.Disconnect(code=4000, reason="bye")))
        code = await next_event(target_events.closes, "the target's close")
        check(code == 4000, f"{kind} disconnect: closed with {code}, expected 4000")
        check(keeper_events.closes.empty(), f"{kind} disconnect: the whitelisted keeper was closed too")

        # batch, sequential then parallel: each reply in its command's place.
        for parallel in (False, True):
            batch = await api("batch", BatchRequest(parallel=parallel, requests=[
                PublishRequest(channel=channel, data={"n": 5}),
                HistoryRequest(channel=channel, limit=0),
                PresenceStatsRequest(channel=channel),
            ]))
            published, top, _ = batch.replies
            check(published.offset in (5, 6), f"{kind} batch publish: {batch}")
            check(top.offset >= 5 and top.publications == [], f"{kind} batch history: {batch}")

        for method, request in PRO_METHODS.items():
            await api.refused(method, request.model_construct(), 104)
    finally:
        await target.disconnect()
        await keeper.disconnect()
        await api.close()
    print(f"{kind} client: every method checked")


async def main():
    try:
        await asyncio.wait_for(scenario("sync"), CFG["timeout"] / 2)
        await asyncio.wait_for(scenario("async"), CFG["timeout"] / 2)
    except CheckError as error:
        print(f"FAIL: {error}")
        return 1
    except asyncio.TimeoutError:
        print("FAIL: timed out")
        return 1
    print("PASS: cent's whole method set, sync and async")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
