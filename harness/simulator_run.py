"""The simulator's run loop: an open loop of /predict requests over aiohttp, the answer and
event handlers, and `simulate` / `run`.

At a fixed rate (constant or Poisson arrivals, scheduled from intended send times) the dispatcher
sends batches of `harness.simulator_batches`, shows each answer's top-scored ad, posts its
impression to `POST /events`, and posts a click with the shown ad's true click probability
(after an optional delay). Events are batched: flushed every `flush_s` or every `flush_events`
events. Latency runs from the intended send time, so a stall counts in every request scheduled
during it; a request sent more than `late_ms` after its intended time is `late`, and requests the
schedule held but never sent are `unsent` — the run reports that it fell behind instead of
quietly sending less.

HTTP goes through aiohttp (keep-alive connections, up to `max_in_flight` /predict requests
outstanding and a few more for events); httpx's AsyncClient spends ~1.3 ms of CPU per request
here and tops out near 400 requests/s on one core, aiohttp ~170 µs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack
import numpy as np
import yarl

from harness import ground_truth
from harness.simulator_batches import Batch, make_batch
from harness.simulator_config import SimConfig
from harness.simulator_stats import ARMS, SimStats
from harness.target import error_kind

MSGPACK = {"Content-Type": "application/msgpack"}
# Connections beyond max_in_flight, so event posts never queue behind /predict requests.
EVENT_CONNECTIONS = 4


class SimulatorError(Exception):
    """The server cannot be simulated against (no champion, features outside the world)."""


def connection_failure(exc: BaseException) -> str:
    """The error count's name for a request that got no HTTP answer."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_" + error_kind(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return error_kind(exc)


class _Run:
    """One simulation: the dispatcher, the answer handlers and the event buffer."""

    def __init__(
        self,
        config: SimConfig,
        features: list[str],
        stats: SimStats,
        http: aiohttp.ClientSession,
    ) -> None:
        self.config = config
        self.features = features
        self.stats = stats
        self.http = http
        # Parsed once: aiohttp would parse a str URL on every request.
        self.predict_urls = [yarl.URL(f"{origin}/predict") for origin in config.origins]
        self.events_urls = [yarl.URL(f"{origin}/events") for origin in config.origins]
        self.posts = 0  # event posts so far: the next goes to the next host
        self.rng = np.random.default_rng(config.seed)
        self.arrivals = np.random.default_rng([config.seed, 1])
        self.events: list[dict[str, Any]] = []
        self.batch_size = int(min(1024, max(16, config.rate * 0.05)))
        self.t0_ns = 0
        self.outstanding = 0  # /predict requests sent and not answered
        self.posting = 0  # event posts sent and not answered
        self.pending_clicks = 0
        self.tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.loop = asyncio.get_running_loop()

    async def dispatch(self, stop: asyncio.Event) -> None:
        config, stats = self.config, self.stats
        clock = time.perf_counter_ns
        period_ns = 1e9 / config.rate
        late_ns = config.late_ms * 1e6
        batch = make_batch(config, self.rng, self.features, 0, self.batch_size)
        upcoming: Batch | None = None
        self.t0_ns = t0 = clock() + 1_000_000  # the first sends are not already late
        stats.started_at = time.time() + 0.001
        end = t0 + int(config.duration_s * 1e9)
        i, offset, due, held = 0, 0.0, t0, False
        while due < end and not stop.is_set():
            now = clock()
            if now >= end and now - due > late_ns:
                break  # what is left of the schedule is past its time: unsent
            if due > now or self.outstanding >= config.max_in_flight:
                held = held or due <= now
                if upcoming is None and i - batch.first > len(batch.bodies) // 2:
                    # Drawing the next batch in the slack keeps it off the send path.
                    first = batch.first + len(batch.bodies)
                    upcoming = make_batch(config, self.rng, self.features, first, self.batch_size)
                    continue
                # uvloop's timers tick in whole ms: a send can be ~1 ms late, far below late_ms.
                await asyncio.sleep((due - now) / 1e9 if due > now else 0.0005)
                continue
            if i - batch.first >= len(batch.bodies):
                batch = upcoming or make_batch(config, self.rng, self.features, i, self.batch_size)
                upcoming = None
            lag = now - due
            if lag > late_ns:
                stats.late += 1
            stats.max_lag_ms = max(stats.max_lag_ms, lag / 1e6)
            if held:
                stats.capped += 1
                held = False
            stats.sent += 1
            self.outstanding += 1
            self._spawn(self._predict(batch, i - batch.first, due))
            i += 1
            offset += self.arrivals.exponential(period_ns) if config.poisson else period_ns
            due = t0 + int(offset)
        # What the schedule held until the end that never went out; after a stop, only what
        # was already late then.
        cutoff = min(clock() - late_ns, end) if stop.is_set() else end
        while due < cutoff:
            i += 1
            offset += self.arrivals.exponential(period_ns) if config.poisson else period_ns
            due = t0 + int(offset)
        stats.scheduled = i
        stats.unsent = i - stats.sent

    def _spawn(self, work: Any) -> None:
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: yarl.URL, body: bytes) -> tuple[int, bytes, str | None]:
        try:
            async with self.http.post(url, data=body, headers=MSGPACK) as r:
                return r.status, await r.read(), None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return 0, b"", connection_failure(e)

    async def _predict(self, batch: Batch, j: int, due: int) -> None:
        urls = self.predict_urls
        url = urls[0] if len(urls) == 1 else urls[(batch.first + j) % len(urls)]
        status, body, error = await self._post(url, batch.bodies[j])
        self.outstanding -= 1
        self.stats.returned += 1
        self._on_predict(batch, j, due, status, body, error)

    def _on_predict(
        self, batch: Batch, j: int, due: int, status: int, body: bytes, error: str | None
    ) -> None:
        stats = self.stats
        if error is not None:
            self._count(stats.errors, f"predict {error}")
            return
        now = time.perf_counter_ns()
        stats.histogram.record_value(min(max((now - due) // 1000, 1), 60_000_000))
        answer = _decode(body)
        if status != 200 or not isinstance(answer, dict):
            reason = answer.get("error") if isinstance(answer, dict) else None
            self._count(stats.errors, f"predict {status} {reason or 'unreadable'}")
            return
        arm, preds, token = answer.get("arm"), answer.get("predictions"), answer.get("token")
        if (
            arm not in stats.arms
            or not isinstance(preds, list)
            or len(preds) != batch.truth.shape[1]
        ):
            self._count(stats.errors, "predict bad_answer")
            return
        stats.answered += 1
        shown = stats.arms[arm]
        shown.requests += 1
        fallback = answer.get("fallback")
        if fallback is not None:
            self._count(stats.fallbacks, str(fallback))
        bucket = int((now - self.t0_ns) / (self.config.timeline_s * 1e9))
        while len(stats.buckets) <= bucket:
            stats.buckets.append([0, 0, 0])
        stats.buckets[bucket][2 if fallback is not None else ARMS.index(arm)] += 1
        best = max(range(len(preds)), key=preds.__getitem__)
        p = preds[best]
        if not 0.0 <= p <= 1.0:  # the server never answers this; do not post what it refuses
            self._count(stats.errors, "predict prediction_out_of_range")
            return
        truth = float(batch.truth[j, best])
        shown.impressions += 1
        shown.true_ctr_sum += truth
        # The shown candidate by its index in the answer: the token covers every candidate.
        impression = {"token": token, "type": "impression", "prediction": p, "candidate": best}
        if batch.click_draw[j] < truth:
            shown.clicks += 1
            click = {**impression, "type": "click"}
            if self.config.click_delay_s > 0:
                self._event(impression)
                self.pending_clicks += 1
                self.loop.call_later(self.config.click_delay_s, self._delayed_click, click)
            else:
                # In one post: a click is counted only after its impression, and two posts
                # in flight may be handled in either order.
                if len(self.events) + 2 > self.config.flush_events:
                    self.flush()
                self.events.append(impression)
                self._event(click)
        else:
            self._event(impression)

    def _delayed_click(self, click: dict[str, Any]) -> None:
        self.pending_clicks -= 1
        self._event(click)

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if len(self.events) >= self.config.flush_events:
            self.flush()

    def flush(self) -> None:
        if not self.events:
            return
        events, self.events = self.events, []
        self.stats.events_posted += len(events)
        self.posting += 1
        self._spawn(self._post_events(msgpack.packb({"events": events})))

    async def _post_events(self, body: bytes) -> None:
        self.posts += 1
        url = self.events_urls[self.posts % len(self.events_urls)]
        status, answer_body, error = await self._post(url, body)
        self.posting -= 1
        answer = _decode(answer_body) if error is None else None
        stats = self.stats
        if status == 200 and isinstance(answer, dict):
            stats.events_accepted += int(answer.get("accepted", 0))
            stats.events_rejected += int(answer.get("rejected", 0))
            for e in answer.get("errors", []):
                self._count(stats.event_errors, str(e.get("reason")))
        else:
            reason = answer.get("error") if isinstance(answer, dict) else None
            self._count(stats.errors, f"events {error or status} {reason or ''}".strip())

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_s)
            self.flush()

    async def ticker(self, on_tick: Callable[[SimStats], None]) -> None:
        period = self.config.timeline_s
        while True:
            await asyncio.sleep(period)
            on_tick(self.stats)

    async def drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s + self.config.click_delay_s
        while (self.outstanding or self.pending_clicks) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.flush()
        while self.posting and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.stats.unanswered = self.outstanding

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    @staticmethod
    def _count(counts: dict[str, int], key: str) -> None:
        counts[key] = counts.get(key, 0) + 1


async def champion_features(http: aiohttp.ClientSession, config: SimConfig) -> list[str]:
    """The champion's ordered feature names, from GET /status; they must be in the ground_truth."""
    async with http.get(f"{config.origin}{config.base}/status") as r:
        r.raise_for_status()
        status = await r.json()
    champion = (status.get("models") or {}).get("champion")
    if not champion:
        raise SimulatorError(f"{config.url} has no champion model to send traffic to")
    features = list(champion["features"])
    try:
        ground_truth.feature_columns(features)
    except ValueError as e:
        raise SimulatorError(f"the champion {champion.get('label')}: {e}") from None
    return features


async def simulate(
    config: SimConfig,
    stop: asyncio.Event | None = None,
    on_tick: Callable[[SimStats], None] | None = None,
) -> SimStats:
    """Run the simulator until `config.duration_s` passes or `stop` is set; `on_tick` is called
    with the live stats every `config.timeline_s`. Returns the stats once answers are in."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.max_in_flight + EVENT_CONNECTIONS),
        # No per-request timer (a slow answer is what the run measures; `drain` bounds the
        # end) and no headers or decompression the server has no use for: ~10% less CPU.
        timeout=aiohttp.ClientTimeout(total=None, connect=5.0),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        auto_decompress=False,
    ) as http:
        features = await champion_features(http, config)
        stats = SimStats(config.rate, config.duration_s, config.timeline_s)
        run = _Run(config, features, stats, http)
        tasks = [asyncio.create_task(run.flusher())]
        if on_tick is not None:
            tasks.append(asyncio.create_task(run.ticker(on_tick)))
        try:
            dispatch = asyncio.create_task(run.dispatch(stop or asyncio.Event()))
            await asyncio.wait([dispatch, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not dispatch.done():  # a helper task failed (on_tick raised): stop sending
                dispatch.cancel()
                for task in tasks:
                    if task.done():
                        task.result()
            dispatch.result()
            await run.drain()
            stats.elapsed_s = (time.perf_counter_ns() - run.t0_ns) / 1e9
        finally:
            for task in tasks:
                task.cancel()
            run.cancel()
    return stats


def run(config: SimConfig) -> SimStats:
    """`simulate` on a fresh uvloop event loop."""
    import uvloop

    return uvloop.run(simulate(config))


def _decode(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body)
    except Exception:
        return None
