"""The workloads Tasklight ships. Names and parameters are part of the API."""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from .registry import Run, WorkloadFailed, workload


class Params(BaseModel):
    # Unknown parameters are a mistake worth telling the client about.
    model_config = ConfigDict(extra="forbid")


class SimulateParams(Params):
    seconds: Annotated[
        float, Field(ge=0, le=3600, allow_inf_nan=False, strict=True, description="How long to work, in seconds.")
    ] = 2
    fail: Annotated[StrictBool, Field(description="Fail at the end, with a readable error.")] = False


@workload(title="Simulate", soft_time_limit=3630, time_limit=3660)
def simulate(params: SimulateParams, run: Run) -> dict[str, Any]:
    """Waits for the given number of seconds, reporting progress; can be told to fail."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < params.seconds:
        run.stop_if_cancelled()
        time.sleep(min(params.seconds - elapsed, 0.1))
        run.progress(time.monotonic() - started, params.seconds)
    if params.fail:
        raise WorkloadFailed(f"Simulated failure after {params.seconds:g} seconds, as requested.")
    return {"slept": params.seconds}


class PrimesParams(Params):
    below: Annotated[
        int, Field(ge=2, le=100_000_000, strict=True, description="Count the primes below this number.")
    ] = 1_000_000


# Each segment of the sieve is this many numbers: big enough that slicing in C
# dominates, small enough for a progress report every few milliseconds.
SIEVE_SEGMENT = 1 << 20


@workload(title="Count primes", soft_time_limit=600, time_limit=630)
def primes(params: PrimesParams, run: Run) -> dict[str, int]:
    """Counts the primes below a number with a segmented sieve: real CPU work."""
    limit = params.below
    root = math.isqrt(limit - 1) + 1 if limit > 2 else 2
    base = bytearray([1]) * root
    base[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(root - 1) + 1):
        if base[n]:
            base[n * n :: n] = bytes(len(range(n * n, root, n)))
    small_primes = [n for n in range(root) if base[n]]
    count = 0
    for low in range(0, limit, SIEVE_SEGMENT):
        run.stop_if_cancelled()
        high = min(low + SIEVE_SEGMENT, limit)
        segment = bytearray([1]) * (high - low)
        for p in small_primes:
            start = max(p * p, -(-low // p) * p)
            if start >= high:
                continue
            segment[start - low :: p] = bytes(len(range(start, high, p)))
        if low == 0:
            segment[0 : min(2, high)] = bytes(min(2, high))
        count += segment.count(1)
        run.progress(high, limit)
    return {"count": count}


MAX_TEXT_BYTES = 1024 * 1024
# A word may hold an apostrophe, straight or typographic: "it's" is one word.
WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


class TextStatsParams(Params):
    text: Annotated[StrictStr, Field(description="The text to analyse, up to 1 MiB of UTF-8.")]

    @field_validator("text")
    @classmethod
    def at_most_one_mebibyte(cls, text: str) -> str:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            raise ValueError(f"The text is longer than {MAX_TEXT_BYTES} bytes of UTF-8.")
        return text


@workload(name="text_stats", title="Text statistics", soft_time_limit=60, time_limit=90)
def text_stats(params: TextStatsParams, run: Run) -> dict[str, Any]:
    """Counts the words and lines of a text and finds its ten most common words."""
    words = [word.lower() for word in WORD.findall(params.text)]
    run.progress(50)
    top = Counter(words).most_common(10)
    return {
        "words": len(words),
        "lines": len(params.text.splitlines()),
        "top_words": [[word, count] for word, count in top],
    }
