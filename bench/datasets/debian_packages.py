"""Rebuild `debian-packages.csv`: real text with natural users, for the global-adapter benchmark.

Each row is one Debian source package of the bookworm release: its description (the
summary line and the first paragraph of the long text, as Debian's archive publishes
them in English), its archive section as the label (8 topical sections), and its
maintainer (a person or a packaging team) as the client. Maintainers specialise, so the
label mix is skewed per client as a real user's would be: the Games Team packages games,
the Med team science, the QA group a bit of everything.

The archive index is what apt already fetches (a package registry this machine reaches),
so the script needs nothing else:

    apt-get update -o Acquire::Languages=en     # the English long descriptions too
    python bench/datasets/debian_packages.py    # writes bench/datasets/debian-packages.csv

bookworm's main index changes only at point releases; the CSV's sha256 is printed so a
rebuild can be compared with the committed file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

LISTS = Path("/var/lib/apt/lists")
PACKAGES = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
TRANSLATIONS = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"
SECTIONS = ("admin", "games", "graphics", "math", "net", "science", "sound", "text")
CLIENTS = 20            # the maintainers with the most source packages in SECTIONS
MIN_ROWS = 20           # a client keeps at least this many packages
MAX_ROWS = 120          # and at most this many (a sample): big teams do not drown the rest
MAX_CHARS = 320         # summary + first paragraph, cut at a word
OUT = Path(__file__).with_name("debian-packages.csv")


def read_index(stem: str) -> str:
    """An apt list file as text, whatever compression apt stored it with (apt-helper
    decompresses all of apt's formats)."""
    found = sorted(LISTS.glob(stem + "*"))
    if not found:
        raise SystemExit(f"no {stem}* in {LISTS}: run `apt-get update -o Acquire::Languages=en` first")
    return subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(found[0])], check=True,
                          capture_output=True, text=True).stdout


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """Debian control stanzas (RFC 822 style): field -> value, continuation lines kept."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        name = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and name:
                fields[name] += "\n" + line
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if fields:
            yield fields


def description(text: str) -> str:
    """The summary line and the long description's first paragraph, as one line."""
    summary, _, long = text.partition("\n")
    first = long.split("\n .")[0]
    words = " ".join([summary.strip(), *first.split()]).split()
    kept: list[str] = []
    for word in words:
        if len(" ".join([*kept, word])) > MAX_CHARS:
            break
        kept.append(word)
    return " ".join(kept)


def client_name(maintainer: str) -> str:
    """The maintainer without the e-mail address, as a plain id."""
    return re.sub(r"[^a-z0-9]+", "-", maintainer.split("<")[0].lower()).strip("-")


def build(seed: int = 0) -> list[dict[str, str]]:
    texts = {s["Description-md5"]: s["Description-en"] for s in stanzas(read_index(TRANSLATIONS))
             if "Description-md5" in s and "Description-en" in s}
    by_client: dict[str, list[dict[str, str]]] = defaultdict(list)
    seen: set[str] = set()
    for package in sorted(stanzas(read_index(PACKAGES)), key=lambda p: p.get("Package", "")):
        source = package.get("Source", package.get("Package", "")).split(" ")[0]
        # One row per source package: its binaries (foo, foo-data, libfoo) share their text.
        if package.get("Section") not in SECTIONS or source in seen or package.get("Description-md5") not in texts:
            continue
        seen.add(source)
        client = client_name(package.get("Maintainer", ""))
        by_client[client].append({"text": description(texts[package["Description-md5"]]),
                                  "label": package["Section"], "client_id": client})
    largest = sorted(by_client, key=lambda c: (-len(by_client[c]), c))[:CLIENTS]
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for client in sorted(largest):
        kept = by_client[client]
        if len(kept) >= MIN_ROWS:
            rows += sorted(rng.sample(kept, min(MAX_ROWS, len(kept))), key=lambda r: r["text"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = build()
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "client_id"])
        writer.writeheader()
        writer.writerows(rows)
    clients = Counter(r["client_id"] for r in rows)
    print(f"{args.out}: {len(rows)} rows, {len(clients)} clients ({min(clients.values())}-{max(clients.values())} "
          f"rows each), labels {dict(sorted(Counter(r['label'] for r in rows).items()))}; "
          f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
