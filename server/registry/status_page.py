"""`fedpeft registry status --html`: the registry's status as one self-contained HTML page
for operators without Grafana: channels, each release's device-report aggregates (drift
flagged) and the canary decisions with their evidence. Every value is escaped: the status
comes from the registry, which the operator's tools do not trust."""

from __future__ import annotations

from html import escape

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00;font-weight:bold}")


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def render(status: dict) -> str:
    """The page for a status answer (KeyError/TypeError/ValueError on a malformed one)."""
    channels = [[escape(str(name)), escape(str(base)[:12]), escape(str(release)[:12])]
                for name, bases in sorted(status["channels"].items()) for base, release in sorted(bases.items())]
    health = [[escape(str(h["release_id"])[:12]), str(int(h["reports"])), f"{100 * float(h['load_success']):.1f}%",
               f"{float(h['median_delta']):+.2f}", f"{float(h['p95_latency_ms']):.1f}",
               "-" if h["median_drift"] is None else f"{float(h['median_drift']):.2f}",
               '<span class="bad">drifting</span>' if h["drifting"] is True else ""] for h in status["health"]]
    decisions = [[escape(str(d["decided_at"])[:19]), escape(str(d["action"])), escape(str(d["release_id"])[:12]),
                  escape(str(d["channel"])),
                  "<br>".join(f"{escape(str(name))}: {escape(str(rule['value']))} "
                              + ("ok" if rule["passed"] is True else '<span class="bad">failed</span>')
                              for name, rule in d["evidence"]["rules"].items())] for d in status["decisions"]]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fedpeft registry</title>"
            f"<style>{STYLE}</style></head><body><h1>fedpeft registry</h1>"
            + _table("Channels", ["channel", "base", "release"], channels)
            + _table("Device reports per release", ["release", "reports", "loaded", "validation (points)",
                                                    "p95 latency (ms)", "drift", ""], health)
            + _table("Canary decisions", ["when", "action", "release", "channel", "evidence"], decisions)
            + "</body></html>\n")
