"""`fedpeft registry status --html`: the registry's status as one self-contained HTML page
for operators without Grafana: channels, each release's device-report aggregates (drift
flagged) and the canary decisions with their evidence. Every value is escaped: the status
comes from the registry, which the operator's tools do not trust."""

from __future__ import annotations

import math
from html import escape

from fedpeft.console import printable

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00;font-weight:bold}")


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _number(value: object) -> float | None:
    """A finite number from the registry's answer, or None for null (ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"not a finite number: {str(value)[:20]!r}")
    return float(value)


def _id(value: object) -> str:
    """A release or base id as shown: its first 12 characters, printable."""
    return printable(str(value)[:12])


def _shown(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(status: dict) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(channels, health, decisions) as plain, printable cells; raises on a malformed status."""
    channels = [[printable(name, 32), _id(base), _id(release)]
                for name, bases in sorted(status["channels"].items()) for base, release in sorted(bases.items())]
    health = []
    for entry in status["health"]:
        load, delta = _number(entry["load_success"]), _number(entry["median_delta"])
        health.append([_id(entry["release_id"]), str(int(_number(entry["reports"]) or 0)),
                       _shown(None if load is None else 100 * load, ".1f") + "%", _shown(delta, "+.2f"),
                       _shown(_number(entry["p95_latency_ms"]), ".1f"), _shown(_number(entry["median_drift"]), ".2f"),
                       "drifting" if entry["drifting"] is True else ""])
    decisions = [[printable(d["decided_at"], 19), printable(d["action"], 12), _id(d["release_id"]),
                  printable(d["channel"], 32),
                  "; ".join(f"{printable(name, 32)} {_shown(_number(rule['value']), '.4g')} "
                            f"{'ok' if rule['passed'] is True else 'FAILED'}"
                            for name, rule in d["evidence"]["rules"].items())] for d in status["decisions"]]
    return channels, health, decisions


def status_lines(status: dict) -> list[str]:
    """`registry status` as lines for a terminal."""
    channels, health, decisions = rows(status)
    return ([f"channel {c}\tbase {b}\trelease {r}" for c, b, r in channels]
            + [f"release {r}\t{n} report(s)\tloaded {load}\tvalidation {d} points\tp95 {p} ms\tdrift {drift}"
               + ("\tDRIFTING" if flag else "") for r, n, load, d, p, drift, flag in health]
            + [f"{when}\t{action} {release} on {channel}\t{rules}" for when, action, release, channel, rules in decisions])


def render(status: dict) -> str:
    """The page for a status answer (KeyError/TypeError/ValueError on a malformed one)."""
    channels, health, decisions = rows(status)
    health = [[*map(escape, row[:-1]), '<span class="bad">drifting</span>' if row[-1] else ""] for row in health]
    decisions = [[*map(escape, row[:-1]), escape(row[-1]).replace("FAILED", '<span class="bad">failed</span>')]
                 for row in decisions]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fedpeft registry</title>"
            f"<style>{STYLE}</style></head><body><h1>fedpeft registry</h1>"
            + _table("Channels", ["channel", "base", "release"], [[*map(escape, row)] for row in channels])
            + _table("Device reports per release", ["release", "reports", "loaded", "validation (points)",
                                                    "p95 latency (ms)", "drift", ""], health)
            + _table("Canary decisions", ["when", "action", "release", "channel", "evidence"], decisions)
            + "</body></html>\n")
