"""The model-health view end to end: a real worker, a real broker, real headless Chromium.

Twelve event days of card traffic go through a worker; a review desk labels every flag
and chargebacks come back for the frauds it approved; midway an operator promotes the
challenger and later rolls it back (``flagstream models``); on the last two days
ordinary amounts jump. A fraud lead signs in, opens "Model health" and sees, per day,
the false-alarm share and recall with their intervals, the threshold, flags against
capacity, automation and overturns, the promotion and the rollback, and the amount
feature's drift alarm; the charts hold the endpoint's numbers.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request

import pytest
from kafka_helpers import ROOT, produce_json, read_json
from test_lifecycle_integration import cli, newest, registry
from test_review_page import CHROMIUM, CHROMIUM_ARGS, wait_until

from flagstream.features.layout import FEATURE_NAMES, N_FEATURES
from flagstream.streams.health_feed import STATELESS_FEATURES, UNWATCHED_FEATURES

pytestmark = pytest.mark.integration

SCREENSHOT = ROOT / "artifacts" / "model-health.png"
TOKEN = "test-review-token-0001"
PER_DAY = 240
DAYS = 12
DRIFT_FROM_DAY = 10


def day_traffic(day: int, rng: random.Random) -> list[tuple[dict, bool]]:
    """One event day: ordinary purchases, and frauds among them: most large at one merchant,
    some small ones anywhere (card testing) that the model misses and chargebacks reveal."""
    out = []
    for i in range(PER_DAY):
        fraud = rng.random() < 0.07
        card = f"c-{rng.randrange(60)}"
        if fraud and rng.random() < 0.75:
            amount, merchant = round(rng.uniform(600, 1_500), 2), "m-bad"
        elif fraud:
            amount, merchant = round(rng.uniform(1, 5), 2), f"m-{rng.randrange(8)}"
        else:
            amount = round(rng.lognormvariate(3.4, 0.5) * (4.0 if day >= DRIFT_FROM_DAY else 1.0), 2)
            merchant = f"m-{rng.randrange(8)}"
        second = i * (86_400 // PER_DAY) + rng.randrange(60)
        clock = f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
        out.append(({
            "transaction_id": f"t-{day:02d}-{i:04d}", "account_id": card, "merchant_id": merchant,
            "amount": amount, "currency": "USD", "channel": "online", "country": "US",
            "timestamp": f"2018-04-{day + 1:02d}T{clock}Z",
        }, fraud))
    return out


def health(url: str) -> dict:
    req = urllib.request.Request(url + "/review/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def status_without_token(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/review/api/health", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def settled_challenger(settings, lineage: str, quiet_s: float = 2.0) -> dict:
    """The challenger version to promote, read once the registry has stopped changing.

    The learner publishes what it learned at most every publish interval (0.5 s here) and
    on its 0.5 s timer: right after it learned the last labels, the registry can still hold
    versions of both lineages from halfway through, equal in labels. Promoting such a
    challenger (and rolling back to such a champion) left three to seven days unflagged
    (a CI failure). Here the newest version of both lineages must stay the same for
    ``quiet_s`` before :func:`learned_as_much` is asked.
    """
    seen: dict[str, object] = {"versions": None, "since": 0.0}

    def check() -> dict | None:
        view = registry(settings)
        champion = view.champion
        versions = ((newest(view, lineage) or {}).get("version"),
                    (newest(view, champion["lineage"]) or {}).get("version") if champion else None)
        if versions != seen["versions"]:
            seen.update(versions=versions, since=time.monotonic())
            return None
        if time.monotonic() - float(seen["since"]) < quiet_s:  # type: ignore[arg-type]
            return None
        return learned_as_much(view, lineage)

    return wait_until(check, 60, "a challenger version that learned every label the champion did")


def learned_as_much(view, lineage: str) -> dict | None:
    """The lineage's newest version once it has learned every label the champion has.

    A challenger's first version is published before any label (it scores the prior, 0.01,
    below every threshold here); promoting that one would flag nothing for three days.
    """
    version, champion = newest(view, lineage), view.champion
    if version is None or champion is None or version["labels"] == 0:
        return None
    return version if version["labels"] >= champion["labels"] else None


class Desk:
    """Sends days of traffic, then the labels that come back for them."""

    def __init__(self, settings, worker) -> None:
        self.settings, self.worker = settings, worker
        self.rng = random.Random(12)
        self.truth: dict[str, bool] = {}
        self.sent = 0
        self.labels = 0

    def days(self, first: int, last: int) -> None:
        traffic = [pair for day in range(first, last + 1) for pair in day_traffic(day, self.rng)]
        self.truth.update((tx["transaction_id"], fraud) for tx, fraud in traffic)
        produce_json(self.settings, "transactions", [tx for tx, _ in traffic], "account_id")
        self.sent += len(traffic)
        wait_until(lambda: self.worker.metric("flagstream_decisions_recorded_total") >= self.sent,
                   180, "the learner to record every decision")
        decisions = read_json(self.settings, "scores", self.sent, timeout_s=60)
        mine = [d for d in decisions if d["transaction_id"] in {tx["transaction_id"] for tx, _ in traffic}]
        feedback = []
        for d in mine:
            fraud = self.truth[d["transaction_id"]]
            if d["decision"] != "approve":  # the desk reviews every flag
                feedback.append({"transaction_id": d["transaction_id"], "source": "review",
                                 "label": "fraud" if fraud else "legit", "reviewer": "desk"})
            elif fraud:  # an approved fraud comes back as a chargeback
                feedback.append({"transaction_id": d["transaction_id"], "label": "fraud",
                                 "source": "chargeback"})
        produce_json(self.settings, "feedback", feedback, "transaction_id")
        self.labels += len(feedback)
        wait_until(lambda: self.worker.metric("flagstream_feedback_labels_total") >= self.labels,
                   120, "the learner to learn the labels")


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_a_fraud_lead_reads_model_health_in_the_browser(settings, worker_factory, monkeypatch, capsys):
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    monkeypatch.setenv("FLAGSTREAM_CHALLENGERS", "lr-fast:learning_rate=0.05")
    monkeypatch.setenv("FLAGSTREAM_GATE_MIN_LABELS", "100000")  # promotions come from the operator
    monkeypatch.setenv("FLAGSTREAM_MODEL_PUBLISH_INTERVAL_S", "0.5")
    worker = worker_factory(threshold=0.005, threshold_floor=0.005, review_capacity_per_day=40.0,
                            label_maturity_s=3 * 86_400.0)
    assert status_without_token(worker.url) == 401

    desk = Desk(settings, worker)
    desk.days(0, 4)
    challenger = settled_challenger(settings, "lr-fast")
    code, out, _ = cli(settings, monkeypatch, capsys, "promote", challenger["version"], "--reason",
                       "learns faster on this traffic")
    assert code == 0, out
    wait_until(lambda: worker.metric("flagstream_model_promotions_total") >= 1, 60, "the promotion applied")
    desk.days(5, 7)
    code, out, _ = cli(settings, monkeypatch, capsys, "rollback", "--reason", "false alarms rose")
    assert code == 0, out
    wait_until(lambda: worker.metric("flagstream_model_rollbacks_total") >= 1, 60, "the rollback applied")
    desk.days(8, DAYS - 1)

    # --- the endpoint: every day, the business metric, the seat changes, the drift --------
    report = wait_until(lambda: (h := health(worker.url))["drift"]["features"] and h, 60, "feature drift")
    days = report["days"]
    assert [d["date"] for d in days] == [f"2018-04-{k + 1:02d}" for k in range(DAYS)]
    assert sum(d["decisions"] for d in days) == desk.sent
    reviewed = sum(d["flagged_fraud"] + d["flagged_legit"] for d in days)
    assert reviewed + sum(d["auto_fraud"] for d in days) == desk.labels
    assert all(d["flagged"] <= d["decisions"] for d in days)
    with_fdr = [d for d in days if d["fdr"] is not None]
    with_recall = [d for d in days if d["recall"] is not None]
    assert len(with_fdr) >= DAYS - 2 and len(with_recall) >= DAYS - 2, [
        (d["date"], d["decisions"], d["flagged"], d["fdr"], d["threshold"]) for d in days]
    assert all(d["fdr_low"] <= d["fdr"] <= d["fdr_high"] for d in with_fdr)
    assert [c["action"] for c in report["seat_changes"]] == ["promote", "rollback"]
    assert [c["day"] is not None for c in report["seat_changes"]] == [True, True]
    assert report["drift"]["features"]["amount"] > report["drift"]["alert"]
    assert "amount" in report["drift"]["alerting"]
    # a stream of a few days: only the stateless features' drift is stated, the others warm up
    assert set(report["drift"]["features"]) == set(STATELESS_FEATURES) - set(UNWATCHED_FEATURES)
    assert set(report["drift"]["warming"]) == set(FEATURE_NAMES) - set(STATELESS_FEATURES)
    assert set(report["drift"]["unwatched"]) == set(UNWATCHED_FEATURES) == {"is_weekend"}
    assert worker.metric('flagstream_drift_alert{signal="features"}') == 1.0
    assert worker.metric('flagstream_feature_psi{feature="amount"}') == report["drift"]["features"]["amount"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 960})
            context.set_default_timeout(20_000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(worker.url + "/review/")
            page.wait_for_url("**/review/login")
            page.fill("#token", TOKEN)
            page.click("#sign-in")
            page.wait_for_url("**/review/")
            page.click("#tab-health")
            expect(page.locator("#health")).to_be_visible()
            expect(page.locator("#queue-view")).to_be_hidden()

            shown = health(worker.url)  # nothing moves now: the page and the endpoint agree
            fdr_points = page.locator("#chart-fdr circle.pt")
            expect(fdr_points).to_have_count(sum(d["fdr"] is not None for d in shown["days"]))
            expect(page.locator("#chart-recall circle.pt")).to_have_count(
                sum(d["recall"] is not None for d in shown["days"]))
            expect(page.locator("#chart-threshold circle.pt")).to_have_count(
                sum(d["threshold"] is not None for d in shown["days"]))
            expect(page.locator("#chart-flags rect.pt")).to_have_count(DAYS)
            expect(page.locator("#chart-auto circle.pt")).to_have_count(DAYS)
            expect(page.locator("#chart-fdr .seat-marker")).to_have_count(2)
            expect(page.locator("#chart-fdr polygon.band").first).to_be_visible()
            first = next(d for d in shown["days"] if d["fdr"] is not None)
            point = page.locator(f'#chart-fdr circle.pt[data-day="{first["date"]}"]')
            assert float(point.get_attribute("data-value") or "nan") == first["fdr"]
            expect(page.locator("#h-threshold")).to_have_text(f'{shown["now"]["threshold"]:.3f}')
            expect(page.locator("#h-champion")).to_have_text(shown["now"]["model_version"])
            expect(page.locator("#h-drift")).to_contain_text("Alert")
            # the score and every feature, is_weekend too: not watched, and why
            expect(page.locator("#h-drift-table tbody tr")).to_have_count(N_FEATURES + 1)
            unwatched = page.locator('#h-drift-table tr[data-signal="is_weekend"]')
            expect(unwatched).to_have_class("drift-unwatched")
            expect(unwatched).to_contain_text("Not watched the calendar sets it for a whole day")
            expect(page.locator('#h-drift-table tr[data-signal="amount"]')).to_have_class("drift-alert")
            warming = page.locator('#h-drift-table tr[data-signal="account_count_30d"]')
            expect(warming).to_have_class("drift-warming")
            expect(warming).to_contain_text("Warming up until 2018-")
            expect(page.locator("#h-changes-table tbody tr")).to_have_count(2)
            expect(page.locator("#h-changes-table")).to_contain_text("Rollback")
            expect(page.locator("#h-changes-table")).to_contain_text("false alarms rose")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.reload()  # the view is addressable: #health opens it again
            expect(page.locator("#chart-fdr circle.pt")).to_have_count(fdr_points.count())
            assert not errors, errors
        finally:
            browser.close()
    print(f"\nmodel-health test took {time.monotonic() - started:.1f} s; screenshot {SCREENSHOT}")
