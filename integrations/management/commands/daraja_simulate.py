"""Send realistic Daraja callbacks to a running back office, for demos and load tests.

Successes, failure codes (cancelled, wrong PIN, timeout, insufficient funds), duplicates, STK and
C2B announcing the same receipt, C2B with a hashed MSISDN. Prints what was sent and the answers'
latency. Example: manage.py daraja_simulate --till 1 --url http://127.0.0.1:8000 --count 200 --rate 50
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.mpesa.models import Till
from integrations.mpesa.simulate import Callback, scenario


class Command(BaseCommand):
    help = "POST realistic Daraja callbacks for a till to a running server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--till", type=int, required=True, help="Till id (its token forms the URLs)")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the running server")
        parser.add_argument("--count", type=int, default=20, help="Customer interactions to simulate")
        parser.add_argument("--rate", type=float, default=10.0, help="Callbacks per second")
        parser.add_argument("--duplicates", type=float, default=0.1, help="Share of callbacks sent twice")
        parser.add_argument("--failures", type=float, default=0.1, help="Share of failed STK prompts")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--threads", type=int, default=8)

    def handle(self, *args: Any, **options: Any) -> None:
        till = Till.objects.filter(pk=options["till"]).first()
        if till is None:
            raise CommandError(f"no till with id {options['till']}")
        rng = random.Random(options["seed"])  # noqa: S311 - demo traffic, not secrets
        calls: list[Callback] = []
        for _ in range(options["count"]):
            for call in scenario(rng, till.shortcode, failure_share=options["failures"]):
                calls.append(call)
                if rng.random() < options["duplicates"]:
                    calls.append(call)
        base = f"{options['url'].rstrip('/')}/daraja/{till.callback_token}/"
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        session_local = threading.local()

        def send(call: Callback) -> None:
            session = getattr(session_local, "s", None) or requests.Session()
            session_local.s = session
            started = time.perf_counter()
            try:
                code = session.post(
                    base + call.path, data=call.body, timeout=10, headers={"Content-Type": "application/json"}
                ).status_code
            except requests.RequestException:
                code = 0
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[code] = statuses.get(code, 0) + 1

        interval = 1.0 / options["rate"] if options["rate"] > 0 else 0.0
        start = time.monotonic()
        with ThreadPoolExecutor(options["threads"]) as pool:
            for n, call in enumerate(calls):
                delay = start + n * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(send, call)
        receipts = {c.receipt for c in calls if c.receipt}
        self.stdout.write(f"sent {len(calls)} callbacks ({len(receipts)} distinct receipts) to {base}")
        self.stdout.write(f"answers: {dict(sorted(statuses.items()))}")
        if latencies:
            ordered = sorted(latencies)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            self.stdout.write(f"ack latency p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
