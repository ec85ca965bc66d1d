"""Automated canary: a promotion policy per channel, applied by the registry as reports arrive.

    [canary]                  # the channel whose releases are judged
    promote_to = "stable"     # where a healthy one goes
    min_reports = 20          # devices that must have reported before any decision
    min_load_success = 0.999  # share of devices whose adapter loaded
    min_validation_delta = -0.5   # median accuracy points against the replaced release
    max_latency_ratio = 1.10  # p95 latency against the release `promote_to` serves

Once a release on the channel has `min_reports` reports, every rule is checked: all hold,
and the release is promoted to `promote_to`; one fails, and the channel is rolled back to
the release `promote_to` serves. Each decision is recorded once, with its evidence.

Who signs: the registry signs the channel roles' next versions itself, with an automation
key the operator has added to those channel roles (`fedpeft keys rotate stable --add
automation.key ...`), not queued for an operator: a canary that waits for a person is not
automated, and TUF bounds that key's power to moving those channels among releases the
operator signed (never root, targets or another channel; devices keep their floor). A
registry started without the key records the decision and moves nothing.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpeft.core.config import Range
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.device_report import HealthReport
from fedpeft.core.trust.files import UnreadableFile, read_small
from fedpeft.core.trust.json_reader import parse_json_object
from fedpeft.core.trust.release import check_channel
from fedpeft.core.trust.signed_files import ManifestError, precise_timestamp
from fedpeft.core.trust.tuf_roles import sign, with_release

from .health import ReleaseHealth, ReportBook
from .store import ChannelMove, RegistryStore
from .tuf_repository import TufRepository, listed_release

log = logging.getLogger("fedpeft.registry")
STATUS_ROWS = 100  # the newest decisions (and reported releases) a status answer carries: it stays small

RULES = {"min_reports": Range(int, 1, 1_000_000), "min_load_success": Range(float, 0, 1),
         "min_validation_delta": Range(float, -100, 100), "max_latency_ratio": Range(float, 0, 1000, low_open=True)}


@dataclass(frozen=True)
class ChannelPolicy:
    channel: str
    promote_to: str
    min_reports: int = 20
    min_load_success: float = 0.999
    min_validation_delta: float = -0.5
    max_latency_ratio: float = 1.10


@dataclass(frozen=True)
class Decision:
    release_id: str
    channel: str
    action: str          # "promote" (to promote_to) or "rollback" (the channel back to what promote_to serves)
    evidence: dict
    moved: tuple[str, str] | None = None  # (channel, release id) it moved, when the automation key signed the move


def load_policies(path: Path) -> dict[str, ChannelPolicy]:
    """The policies of a TOML file, every value checked; ConfigError names the first bad one."""
    try:
        table = tomllib.loads(read_small(Path(path)).decode())
    except (UnreadableFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"canary policy {path}: {exc}") from exc
    policies = {}
    for channel, rules in table.items():
        try:
            if not isinstance(rules, dict) or set(rules) - {"promote_to", *RULES} or "promote_to" not in rules:
                raise ConfigError(f"[{channel}] takes promote_to and {sorted(RULES)}")
            values = {name: rules[name] for name in RULES if name in rules}
            for name, value in values.items():
                RULES[name].check(f"[{channel}] {name}", value)
            policy = ChannelPolicy(check_channel(channel), check_channel(rules["promote_to"]), **values)
        except ManifestError as exc:
            raise ConfigError(f"canary policy {path}: {exc}") from exc
        if policy.promote_to == policy.channel:
            raise ConfigError(f"canary policy {path}: [{channel}] promotes to itself")
        policies[policy.channel] = policy
    return policies


def decide(policy: ChannelPolicy, health: ReleaseHealth, baseline: ReleaseHealth | None) -> Decision | None:
    """What the policy says about a release with `health`, against `baseline` (the health of
    the release `promote_to` serves, when it has reports); None until enough devices reported."""
    if health.reports < policy.min_reports:
        return None
    # A rule with no evidence fails, except latency without a baseline to compare with (the
    # first release of a base): then it is recorded as None and not held against the release.
    base_latency = baseline.p95_latency_ms if baseline else None
    ratio = (health.p95_latency_ms / base_latency if health.p95_latency_ms is not None and base_latency else None)
    rules = {
        "load_success": (health.load_success, health.load_success >= policy.min_load_success),
        "median_validation_delta": (health.median_delta, health.median_delta is not None
                                    and health.median_delta >= policy.min_validation_delta),
        "p95_latency_ratio": (ratio, (ratio <= policy.max_latency_ratio) if ratio is not None
                              else health.p95_latency_ms is not None and not base_latency),
    }
    evidence = {"health": health.as_dict(), "baseline": baseline.as_dict() if baseline else None,
                "rules": {name: {"value": value, "passed": passed} for name, (value, passed) in rules.items()},
                "policy": {k: v for k, v in policy.__dict__.items() if k != "channel"}}
    action = "promote" if all(passed for _, passed in rules.values()) else "rollback"
    return Decision(health.release_id, policy.channel, action, evidence)


class AutomatedCanary:
    """Applies the policies as reports arrive: a decision is recorded (once per release and
    channel) and, with the automation key, made as a signed change of a channel role."""

    def __init__(self, store: RegistryStore, tuf: TufRepository, book: ReportBook,
                 policies: dict[str, ChannelPolicy], key: Ed25519PrivateKey | None) -> None:
        self.store, self.tuf, self.book, self.policies, self.key = store, tuf, book, policies, key

    def after(self, report: HealthReport) -> Decision | None:
        """The decision `report` settles, if the release it is on is still the current one of a
        channel with a policy and was not decided before."""
        policy = self.policies.get(report.channel)
        if policy is None or not self.tuf.enabled or policy.channel not in self.tuf.channels():
            return None
        base = report.base_id
        if listed_release(self.tuf.current(policy.channel), policy.channel, base) != report.release_id:
            return None
        if self.store.db.execute("SELECT 1 FROM decisions WHERE release_id = ? AND channel = ?",
                                 (report.release_id, policy.channel)).fetchone():
            return None
        baseline_id = listed_release(self.tuf.current(policy.promote_to), policy.promote_to, base)
        if baseline_id == report.release_id:  # canary was rolled back to what promote_to serves: nothing to judge
            return None
        baseline = self.store.release(baseline_id) if baseline_id else None
        if baseline is not None and baseline.version >= self.store.release(report.release_id).version:
            return None  # promote_to serves a newer release already: promoting this one would move it back
        decision = decide(policy, self.book.health(report.release_id),
                          self.book.health(baseline_id) if baseline_id else None)
        if decision is None:
            return None
        role, release_id = ((policy.promote_to, report.release_id) if decision.action == "promote"
                            else (policy.channel, baseline_id))
        moved = (role, release_id) if self.key is not None and release_id is not None else None
        decision = Decision(decision.release_id, decision.channel, decision.action, decision.evidence, moved)
        if release_id is None:
            log.warning("registry: canary rollback of %s has no release to go back to (%s serves none): recorded, "
                        "nothing moved", report.release_id[:12], policy.promote_to)
        with self.store.transaction():
            self.store.db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?)", (
                decision.release_id, decision.channel, decision.action,
                json.dumps({**decision.evidence, "moved": list(moved) if moved else None}),
                datetime.now(UTC).isoformat()))
            if moved is not None:
                stored = self.store.release(release_id)
                metadata = with_release(self.tuf.current(role), role, base, stored.manifest, stored.signature,
                                        stored.version, release_id)
                self.tuf.stage([(role, sign(metadata, [self.key]))])()
                # the channel table (GetLatest, List) follows too; the decision is its signed record
                self.store.move_channel(base, release_id, ChannelMove(
                    role, precise_timestamp(datetime.now(UTC)), json.dumps(decision.evidence).encode(), b""))
        log.info("registry: canary decision %s for release %s on %s: %s", decision.action, decision.release_id[:12],
                 decision.channel, json.dumps(decision.evidence["rules"]))
        return decision

    def decisions(self) -> list[dict]:
        """The newest STATUS_ROWS decisions, oldest first."""
        rows = self.store.db.execute("SELECT release_id, channel, action, evidence, decided_at FROM decisions "
                                     "ORDER BY decided_at DESC LIMIT ?", (STATUS_ROWS,)).fetchall()[::-1]
        return [{"release_id": r, "channel": c, "action": a, "evidence": parse_json_object(e.encode(), "evidence"),
                 "decided_at": t} for r, c, a, e, t in rows]
