"""How many orders/s `Normalizer.user_data` normalizes and hashes on one core.

A typical order carries 9 identifiers (em ph fn ln ct st zp country external_id). Three scenarios,
each run for `--seconds` on one thread:

- repeat: customers drawn from a pool that fits the default cache (65,536 entries), the steady state
  of a shop where most orders come from known customers;
- unique: every order a new customer (cache on, but nothing repeats): the worst case;
- no-cache: the same orders as "repeat" with `cache_size=0`, the cost of the rules alone.

    .venv/bin/python bench/normalize_throughput.py --seconds 2
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator

from consumer.normalize import Normalizer

CITIES = [
    ("San Francisco", "California", "94103", "(415) 555-{:04d}"),
    ("New York", "NY", "10001-1234", "212.555.{:04d}"),
    ("Austin", "Texas", "78701", "512-555-{:04d}"),
    ("Saint-Étienne", "Auvergne-Rhône-Alpes", "42000", "04 77 55 {:02d} {:02d}"),
    ("London", "Greater London", "SW1A 1AA", "020 7946 {:04d}"),
]
COUNTRIES = ["US", "United States", "USA", "FR", "GB"]
FIRST = ["Mary", "José", "Anne-Marie", "Li", "O'Neil", "Zoë"]
LAST = ["Smith", "García", "van der Berg", "Nguyễn", "Müller", "Dubois"]


def order(n: int) -> dict[str, object]:
    """Raw user_data of customer `n`, shaped like a decoded order event (mixed case, spaces, names)."""
    city, state, zip_code, phone = CITIES[n % len(CITIES)]
    country = COUNTRIES[n % len(COUNTRIES)]
    phone = phone.format(n % 100, n % 97) if phone.count("{") == 2 else phone.format(n % 10_000)
    return {
        "em": f"  Customer.{n}@Example.COM ",
        "ph": phone,
        "fn": FIRST[n % len(FIRST)],
        "ln": LAST[n % len(LAST)],
        "ct": city,
        "st": state,
        "zp": zip_code,
        "country": country,
        "external_id": f"cust-{n:08d}",
    }


def run(label: str, normalizer: Normalizer, orders: Iterator[dict[str, object]], seconds: float) -> float:
    """Normalize orders for `seconds`; prints and returns orders per second."""
    user_data: Callable[[dict[str, object]], object] = normalizer.user_data
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for raw in itertools.islice(orders, 1000):
            user_data(raw)
        done += 1000
        now = time.perf_counter()
        if now >= deadline:
            break
    rate = done / (now - start)
    hits, misses, size = normalizer.cache_stats()
    cache = f"cache hits {hits:,} misses {misses:,} size {size:,}"
    print(f"{label:<9} {rate:>10,.0f} orders/s  ({done:,} orders, {cache})")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each scenario, seconds")
    parser.add_argument("--customers", type=int, default=5000, help="repeat-customer pool size")
    args = parser.parse_args()

    pool = [order(n) for n in range(args.customers)]
    # Warm the pool once so that "repeat" measures the steady state, not the first sight of each customer.
    warm = Normalizer()
    for raw in pool:
        warm.user_data(raw)
    run("repeat", warm, itertools.cycle(pool), args.seconds)
    run("unique", Normalizer(), (order(n) for n in itertools.count(args.customers)), args.seconds)
    run("no-cache", Normalizer(cache_size=0), itertools.cycle(pool), args.seconds)


if __name__ == "__main__":
    main()
