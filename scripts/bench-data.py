#!/usr/bin/env python3
"""The realistic benchmark dataset of `make bench` (scripts/bench.sh): an application's tables as
they look in real life, generated offline and deterministically (seeded), streamed to stdout in
COPY text format, one table per call:

    python3 scripts/bench-data.py schema            # CREATE TABLE statements
    python3 scripts/bench-data.py constraints       # foreign keys and indexes, after the load
    python3 scripts/bench-data.py TABLE SCALE       # rows of TABLE for SCALE (1 ≈ 1.2 GB dump)

users (names and e-mails from Debian's wamerican word list, UUIDs, countries, a short bio),
orders (UUIDs, amounts, jsonb attributes with line items), comments (English-like text: words
drawn with a Zipf-like distribution from the word list) and attachments (bytea, a share of it
random bytes, the rest text-like). Real application data compresses 3-5:1; this set is tuned to
that range (BENCHMARKS.md states its gzip and zstd ratios as measured).
"""

import json
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone

WORDS = "/usr/share/dict/american-english"
SEED = 20261203

USERS, ORDERS, COMMENTS, ATTACHMENTS = 300_000, 1_000_000, 700_000, 40_000

SCHEMA = """
CREATE TABLE users (
    id bigint PRIMARY KEY,
    uuid uuid NOT NULL UNIQUE,
    email text NOT NULL,
    name text NOT NULL,
    country char(2) NOT NULL,
    created_at timestamptz NOT NULL,
    bio text
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    uuid uuid NOT NULL,
    status text NOT NULL,
    total numeric(12,2) NOT NULL,
    currency char(3) NOT NULL,
    attrs jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz
);
CREATE TABLE comments (
    id bigint PRIMARY KEY,
    order_id bigint NOT NULL,
    author_id bigint NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE attachments (
    id bigint PRIMARY KEY,
    order_id bigint NOT NULL,
    name text NOT NULL,
    mime text NOT NULL,
    data bytea NOT NULL
);
"""

# After the load, as an application's migrations leave them (and as a bulk load adds them).
CONSTRAINTS = """
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users;
ALTER TABLE comments ADD FOREIGN KEY (order_id) REFERENCES orders;
ALTER TABLE comments ADD FOREIGN KEY (author_id) REFERENCES users;
ALTER TABLE attachments ADD FOREIGN KEY (order_id) REFERENCES orders;
CREATE INDEX ON orders (user_id);
CREATE INDEX ON orders USING gin (attrs jsonb_path_ops);
CREATE INDEX ON comments (order_id);
CREATE INDEX ON users (lower(email));
"""

COUNTRIES = ["US", "DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE", "BR", "IN", "JP", "CA", "AU"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me",
           "gmx.de", "web.de", "orange.fr", "example.org", "mail.ru", "aol.com", "live.com",
           "fastmail.com", "posteo.de", "yandex.ru", "qq.com", "163.com", "zoho.com", "tutanota.com"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
CHANNELS = ["web", "ios", "android", "pos", "api", "marketplace"]
CURRENCIES = ["USD", "EUR", "GBP", "SEK", "PLN", "BRL", "JPY"]
MIMES = ["application/pdf", "image/png", "image/jpeg", "text/plain", "text/csv"]
EPOCH = datetime(2021, 1, 1, tzinfo=timezone.utc)


class Gen:
    def __init__(self, table):
        # One stream per table: a table's rows do not depend on which others were generated.
        self.r = random.Random(f"{SEED}-{table}")
        with open(WORDS, encoding="utf-8") as f:
            words = [w.strip() for w in f if w.strip() and "'" not in w]
        # A fixed shuffle, so the frequent words are not all from the start of the alphabet.
        random.Random(SEED).shuffle(words)
        self.words = words
        # Zipf-like: the k-th word's weight is 1/k^1.15 (English is close to 1/k).
        total, self.cum = 0.0, []
        for k in range(1, len(words) + 1):
            total += 1.0 / k**1.15
            self.cum.append(total)
        self.names = [w.capitalize() for w in words[:20000] if w.isalpha()]

    def text(self, lo, hi):
        n = self.r.randint(lo, hi)
        ws = self.r.choices(self.words, cum_weights=self.cum, k=n)
        out, i = [], 0
        while i < n:
            k = self.r.randint(6, 18)
            s = ws[i:i + k]
            s[0] = s[0].capitalize()
            out.append(" ".join(s) + self.r.choice([".", ".", ".", "!", "?"]))
            i += k
        return " ".join(out)

    def uuid(self):
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def when(self, days=1400):
        return EPOCH + timedelta(seconds=self.r.randint(0, days * 86400))


def esc(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def ts(t):
    return t.strftime("%Y-%m-%d %H:%M:%S+00")


def users(g, n, out):
    for i in range(1, n + 1):
        first, last = g.r.choice(g.names), g.r.choice(g.names)
        email = f"{first.lower()}.{last.lower()}{g.r.randint(1, 999)}@{g.r.choices(DOMAINS, cum_weights=g.cum[:len(DOMAINS)])[0]}"
        bio = esc(g.text(1, 30)) if g.r.random() < 0.6 else "\\N"
        out.write(f"{i}\t{g.uuid()}\t{esc(email)}\t{esc(first + ' ' + last)}\t{g.r.choice(COUNTRIES)}\t{ts(g.when())}\t{bio}\n")


def orders(g, n, users_n, out):
    for i in range(1, n + 1):
        items = [
            {"sku": f"SKU-{g.r.randint(1, 50000):06d}", "qty": g.r.randint(1, 5),
             "price": round(g.r.uniform(1, 300), 2)}
            for _ in range(g.r.randint(1, 5))
        ]
        attrs = {"channel": g.r.choice(CHANNELS), "items": items,
                 "gift": g.r.random() < 0.1, "ip": f"{g.r.randint(1, 223)}.{g.r.randint(0, 255)}.{g.r.randint(0, 255)}.{g.r.randint(1, 254)}"}
        if g.r.random() < 0.2:
            attrs["coupon"] = g.r.choice(g.words).upper()[:12]
        if g.r.random() < 0.3:
            attrs["note"] = g.text(3, 15)
        total = sum(it["qty"] * it["price"] for it in items)
        created = g.when()
        updated = ts(created + timedelta(hours=g.r.randint(1, 400))) if g.r.random() < 0.7 else "\\N"
        out.write(f"{i}\t{g.r.randint(1, users_n)}\t{g.uuid()}\t{g.r.choice(STATUSES)}\t{total:.2f}\t{g.r.choice(CURRENCIES)}\t{esc(json.dumps(attrs))}\t{ts(created)}\t{updated}\n")


def comments(g, n, orders_n, users_n, out):
    for i in range(1, n + 1):
        out.write(f"{i}\t{g.r.randint(1, orders_n)}\t{g.r.randint(1, users_n)}\t{esc(g.text(8, 120))}\t{ts(g.when())}\n")


def attachments(g, n, orders_n, out):
    for i in range(1, n + 1):
        size = g.r.randint(1024, 12288)
        if g.r.random() < 0.2:  # already compressed: images, PDFs
            data = g.r.randbytes(size)
        else:
            data = g.text(size // 7, size // 5).encode()[:size]
        mime = g.r.choice(MIMES)
        name = f"{g.r.choice(g.words).lower()}-{i}.{mime.split('/')[1]}"
        out.write(f"{i}\t{g.r.randint(1, orders_n)}\t{esc(name)}\t{mime}\t\\\\x{data.hex()}\n")


def main():
    if sys.argv[1:] == ["schema"]:
        sys.stdout.write(SCHEMA)
        return
    if sys.argv[1:] == ["constraints"]:
        sys.stdout.write(CONSTRAINTS)
        return
    table, scale = sys.argv[1], float(sys.argv[2])
    u, o, c, a = (max(1, int(x * scale)) for x in (USERS, ORDERS, COMMENTS, ATTACHMENTS))
    g = Gen(table)
    out = sys.stdout
    if table == "users":
        users(g, u, out)
    elif table == "orders":
        orders(g, o, u, out)
    elif table == "comments":
        comments(g, c, o, u, out)
    elif table == "attachments":
        attachments(g, a, o, out)
    else:
        sys.exit(f"bench-data: unknown table {table!r}: users, orders, comments or attachments")


if __name__ == "__main__":
    main()
