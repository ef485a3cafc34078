"""The raw path's publisher: one process, one running event loop, one
``RedisPubSubChannelLayer``; ``group_send`` of a timestamped frame at a steady
rate (the sender keeps its loop, as Tasklight's publisher does).

    python -m bench.raw_publisher --rate 100 --count 2000 --warmup 50
"""

from __future__ import annotations

import argparse
import asyncio
import time

from channels_redis.pubsub import RedisPubSubChannelLayer

from .raw_app import GROUP, PREFIX, REDIS_URL


async def publish(rate: float, count: int, warmup: int) -> None:
    layer = RedisPubSubChannelLayer(hosts=[{"address": REDIS_URL, "max_connections": 1000}], prefix=PREFIX)
    start = time.monotonic()
    total = warmup + count
    for seq in range(total):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = {"seq": seq, "warmup": seq < warmup, "sent": time.time()}
        await layer.group_send(GROUP, {"type": "raw.message", "frame": frame})
    await layer.group_send(GROUP, {"type": "raw.message", "frame": {"seq": total, "done": True, "sent": time.time()}})
    await layer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(publish(args.rate, args.count, args.warmup))


if __name__ == "__main__":
    main()
