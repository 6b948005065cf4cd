"""The review page end to end: a real worker, a real broker and real headless Chromium.

A reviewer signs in with their own token, sees a freshly flagged transaction appear
in the queue without reloading, opens it (which reserves it), labels it fraud; the
label is on the feedback topic and the learner learns from it. Unauthenticated
requests get 401, forged writes get 403, and a second reviewer cannot take a reserved
item (409). On the same port nothing but flagstream's routes answer (Faust's table,
router and statistics views are off), a worker that has no reviewer prints a first
token once on its console and never logs it, and wrong bearer tokens are throttled.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from kafka_helpers import FLAG_EVERYTHING, ROOT, free_port, produce_json, read_json

from flagstream.sinks.review.credentials import REVIEWERS_FILE, ReviewerTokens
from flagstream.streams.config import Secret

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT = ROOT / "artifacts" / "review-page.png"
PAN = "4111111111111111"
TARGET = "t-target-0001"


def wait_until(check: Callable[[], object], timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def produce_off_loop(settings, records: list[dict]) -> None:
    """produce_json from a thread: Playwright's sync API keeps an event loop in this one."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            produce_json(settings, "transactions", records, "account_id")
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]


class Api:
    """The review API with a reviewer's token, as a script or a second reviewer would call it."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token

    def call(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            text = err.read()
            return err.code, json.loads(text) if text.startswith(b"{") else {}

    def items(self) -> list[dict]:
        status, body = self.call("/review/api/queue?limit=200")
        assert status == 200, body
        return body["items"]


def transaction(tx: str, card: str, merchant: str, amount: float, minute: int) -> dict:
    return {
        "transaction_id": tx, "account_id": card, "merchant_id": merchant, "amount": amount,
        "currency": "USD", "channel": "online", "country": "US", "card_number": PAN,
        "timestamp": f"2018-04-02T{minute // 60:02d}:{minute % 60:02d}:00Z",
    }


def warm_up() -> list[dict]:
    """Six cards with ordinary purchases and one large one each at a 'bad' merchant."""
    out = []
    for c in range(1, 7):
        for k in range(8):
            big = k == 6
            amount = 900.0 + 97 * c if big else 18.0 + 7.5 * ((c * 3 + k) % 9)
            merchant = "m-9" if big else f"m-{(c + k) % 4 + 1}"
            out.append(transaction(f"t-{c}{k:03d}", f"c-{c}", merchant, amount, 60 * k + c))
    return out


def labelled_total(worker, source: str = "review") -> float:
    total = 0.0
    for line in worker.metrics().splitlines():
        if line.startswith("flagstream_feedback_labels_total{") and f'source="{source}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_reviewer_labels_a_flagged_transaction_in_the_browser(settings, worker_factory):
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    operator = ReviewerTokens(settings.data_path / REVIEWERS_FILE)  # `flagstream review-tokens add`
    ana_token, ben_token = operator.add("Ana Ruiz"), operator.add("Ben")
    worker = worker_factory(**FLAG_EVERYTHING)  # flag everything
    api = Api(worker.url, settings.review_token.reveal())  # the configured token: reviewer admin

    # --- unauthenticated: 401, for the page and the API ------------------------------
    for path in ("/review/", "/review/api/queue"):
        assert Api(worker.url, None).call(path)[0] == 401
    assert Api(worker.url, "wrong-token").call("/review/api/queue")[0] == 401

    # --- a history to look at, and a model that has learned from labels --------------
    warm = warm_up()
    produce_json(settings, "transactions", warm, "account_id")
    wait_until(lambda: len(api.items()) >= len(warm), what="warm-up flags in the queue")
    seeded = 0
    for item in api.items():
        if item["account_id"] in {"c-1", "c-2", "c-3", "c-4"}:
            label = "fraud" if item["merchant_id"] == "m-9" else "legit"
            status, body = api.call(f"/review/api/items/{item['id']}/decision", {"label": label})
            assert status == 200, body
            seeded += 1
    wait_until(lambda: labelled_total(worker) >= seeded, what="the learner to learn the seeded labels")
    sequence_before = wait_until(lambda: worker.metric("flagstream_model_sequence"),
                                 what="a model version learned from the seeded labels")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 960})
            context.set_default_timeout(20_000)  # no step may wait forever
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # --- sign in: the page sends a stranger to the login form ------------------
            response = page.goto(worker.url + "/review/")
            assert response is not None
            page.wait_for_url("**/review/login")
            page.fill("#token", "not-the-token")
            page.click("#sign-in")
            expect(page.locator("#login-error")).to_contain_text("Wrong token")
            page.fill("#token", ana_token)  # her token says who she is
            page.click("#sign-in")
            page.wait_for_url("**/review/")
            expect(page.locator("#who")).to_have_text("Ana Ruiz")
            cookie = next(c for c in context.cookies() if c["name"] == "flagstream_review")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # --- a new flag appears without reloading (the page polls) -----------------
            rows = page.locator("#queue-body tr")
            expect(rows).to_have_count(len(warm) - seeded)
            produce_off_loop(settings, [transaction(TARGET, "c-1", "m-9", 1_480.0, 7 * 60 + 30)])
            row = page.locator("#queue-body tr", has_text=TARGET)
            expect(row).to_be_visible(timeout=30_000)
            expect(page.locator("#live-text")).to_have_text("Live")

            # --- open it: score, model version, reasons, the card's and merchant's past
            row.click()
            expect(page.locator("#d-tx")).to_have_text(TARGET)
            expect(page.locator("#d-claim")).to_contain_text("Reserved for you")
            expect(page.locator("#d-model")).to_contain_text(f"{settings.champion_lineage()}-")
            expect(page.locator("#d-reasons li").first).to_be_visible()
            expect(page.locator("#d-card-history tbody tr")).to_have_count(8)  # c-1's eight earlier ones
            expect(page.locator("#d-card-history")).to_contain_text("Fraud")
            expect(page.locator("#d-merchant-history tbody tr").first).to_contain_text("c-")
            assert PAN not in page.content()
            target_id = row.get_attribute("data-id")

            # --- a second reviewer cannot take it meanwhile ----------------------------
            ben = Api(worker.url, ben_token)
            status, body = ben.call(f"/review/api/items/{target_id}/claim", {})
            assert status == 409 and body["claimed_by"] == "Ana Ruiz"
            assert ben.call(f"/review/api/items/{target_id}/decision", {"label": "legit"})[0] == 409

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

            # --- forged writes: the session cookie without its CSRF token --------------
            other = page.locator("#queue-body tr").nth(1).get_attribute("data-id")
            decision = f"{worker.url}/review/api/items/{other}/decision"
            assert page.request.post(decision, form={"label": "fraud"}).status == 403
            assert page.request.post(decision, form={"label": "fraud", "csrf_token": "forged"}).status == 403
            assert page.request.post(decision, data={"label": "fraud"},
                                     headers={"X-CSRF-Token": "forged"}).status == 403
            attacker = context.new_page()  # another site auto-posting a form at the reviewer
            attacker.set_content(
                f'<form method="post" action="{decision}"><input name="label" value="fraud">'
                '<button id="go">win a prize</button></form>'
            )
            with attacker.expect_response(lambda r: r.url == decision, timeout=20_000) as forged:
                attacker.click("#go", no_wait_after=True)
            assert forged.value.status in {401, 403}
            attacker.close(run_before_unload=True)  # a plain close can hang mid-navigation
            assert any(i["id"] == other for i in api.items()), "forged posts changed nothing"

            # --- label it fraud -------------------------------------------------------
            page.fill("#note", "Card holder confirmed they did not make this purchase.")
            page.click("#btn-fraud")
            expect(page.locator("#toast")).to_contain_text("Labelled fraud")
            expect(row).to_have_count(0)
            assert not errors, errors
        finally:
            browser.close()

    # --- the label is on the feedback topic, and the learner learned it ----------------
    feedback = read_json(settings, "feedback", seeded + 1)
    mine = [f for f in feedback if f["transaction_id"] == TARGET]
    assert len(mine) == 1
    assert mine[0]["label"] == "fraud" and mine[0]["source"] == "review"
    assert mine[0]["reviewer"] == "Ana Ruiz" and mine[0]["note"].startswith("Card holder")
    assert mine[0]["decided_at"].endswith("Z")
    wait_until(lambda: labelled_total(worker) >= seeded + 1, what="the learner to learn the label")
    assert worker.metric("flagstream_feedback_labels_total") >= 1
    wait_until(lambda: worker.metric("flagstream_model_sequence") > sequence_before,
               what="a new model version")
    assert all(i["id"] != target_id for i in api.items()), "the item left the queue for everyone"
    assert worker.metric('flagstream_review_decisions_total{label="fraud",reviewer="Ana Ruiz"}') == 1
    print(f"\nreview page test took {time.monotonic() - started:.1f} s; screenshot {SCREENSHOT}")


def flagged_queue(settings, worker_factory, prefix: str, n: int) -> tuple:
    """A worker that flags everything, ``n`` transactions through it, and its queue once all
    ``n`` are in it: (worker, api, items)."""
    worker = worker_factory(**FLAG_EVERYTHING)
    api = Api(worker.url, settings.review_token.reveal())
    produce_json(settings, "transactions",
                 [transaction(f"{prefix}{i}", f"c-{i}", "m-1", 20.0 + i, i) for i in range(n)],
                 "account_id")
    items = wait_until(lambda: (lambda got: got if len(got) == n else None)(api.items()),
                       what=f"{n} flags in the queue")
    return worker, api, items


def test_the_queue_is_rebuilt_from_kafka_after_a_restart(settings, worker_factory):
    """Pending flags come back after a restart; decided ones do not (their labels are on feedback)."""
    first, api, items = flagged_queue(settings, worker_factory, "t-r", 6)
    decided = {i["transaction_id"] for i in items[:2]}
    for item in items[:2]:
        assert api.call(f"/review/api/items/{item['id']}/decision", {"label": "legit"})[0] == 200
    first.stop()

    second = worker_factory(**FLAG_EVERYTHING)
    api = Api(second.url, settings.review_token.reveal())
    rebuilt = wait_until(lambda: (lambda got: got if len(got) >= 4 else None)(api.items()),
                         what="the rebuilt queue")
    time.sleep(1.0)  # anything that should not be there would have arrived by now
    assert {i["transaction_id"] for i in api.items()} == {f"t-r{i}" for i in range(6)} - decided
    assert len(rebuilt) == 4


def test_labels_from_elsewhere_take_their_flags_off_the_queue_within_seconds(settings, worker_factory):
    """Labels another tool writes on ``feedback`` empty the page of those flags while it runs; a
    label the ledger refuses does not; a claimed item labelled elsewhere is refused on submit."""
    worker, api, items = flagged_queue(settings, worker_factory, "t-e", 8)
    by_tx = {i["transaction_id"]: i["id"] for i in items}
    claimed = "t-e0"
    assert api.call(f"/review/api/items/{by_tx[claimed]}/claim", {})[0] == 200
    elsewhere = [
        {"transaction_id": claimed, "label": "fraud", "source": "review", "reviewer": "other-tool"},
        {"transaction_id": "t-e1", "label": "legit", "source": "review", "reviewer": "other-tool"},
        {"transaction_id": "t-e2", "label": "fraud", "source": "chargeback"},
    ]
    refused = {"transaction_id": "t-e3", "label": "fraud", "source": "auto"}  # auto says legit only
    sent_at = time.monotonic()
    produce_json(settings, "feedback", [*elsewhere, refused], "transaction_id")
    left = {"t-e0", "t-e1", "t-e2"}
    wait_until(lambda: not left & {i["transaction_id"] for i in api.items()}, 30,
               "the flags labelled elsewhere to leave the queue")
    took = time.monotonic() - sent_at
    letters = read_json(settings, "feedback.dlq", 1, timeout_s=30)
    assert [(x["reason"], json.loads(x["original"])["transaction_id"]) for x in letters] == [
        ("invalid_label", "t-e3")]
    assert {i["transaction_id"] for i in api.items()} == {f"t-e{i}" for i in range(3, 8)}

    status, body = api.call(f"/review/api/items/{by_tx[claimed]}/decision", {"label": "legit"})
    assert status == 409 and body["error"] == "already labelled fraud by other-tool (review)"
    feedback = read_json(settings, "feedback", len(elsewhere) + 1, timeout_s=10)
    assert [f["transaction_id"] for f in feedback].count(claimed) == 1, "no second label was sent"
    assert len(feedback) == len(elsewhere) + 1
    assert worker.metric('flagstream_review_labelled_elsewhere_total{claimed="yes",source="review"}') == 1
    assert worker.metric('flagstream_review_labelled_elsewhere_total{claimed="no",source="review"}') == 1
    assert worker.metric('flagstream_review_labelled_elsewhere_total{claimed="no",source="chargeback"}') == 1
    assert worker.metric("flagstream_review_queue_depth") == 5
    print(f"\nlabels from elsewhere left the queue {took:.1f} s after they were produced")


@pytest.mark.timeout(300)
def test_each_workers_learner_sees_the_labels_of_its_own_queue(settings, worker_factory, tmp_path):
    """Two learning workers split the review partitions; the feedback partitions go with them
    (same count, same subscribers), so every label from elsewhere reaches the queue holding it."""
    first = worker_factory(**FLAG_EVERYTHING)
    second = worker_factory(data_dir=str(tmp_path / "second"), web_port=free_port(),
                            **FLAG_EVERYTHING)
    apis = [Api(w.url, settings.review_token.reveal()) for w in (first, second)]
    txs = [f"t-w{i}" for i in range(16)]
    produce_json(settings, "transactions",
                 [transaction(tx, f"c-{i}", "m-1", 20.0 + i, i) for i, tx in enumerate(txs)],
                 "account_id")
    queued = wait_until(lambda: (lambda a, b: (a, b) if len(a) + len(b) == 16 else None)(
        *({i["transaction_id"] for i in api.items()} for api in apis)), what="16 flags in two queues")
    assert all(queued) and not queued[0] & queued[1], "each worker queues its own partitions"
    produce_json(settings, "feedback", [{"transaction_id": tx, "label": "legit", "source": "review",
                                         "reviewer": "other-tool"} for tx in txs], "transaction_id")
    wait_until(lambda: not any(api.items() for api in apis), 30, "both queues emptied")
    for worker in (first, second):
        assert b"feedback partitions" not in worker.run_log()
    assert sum(w.metric("flagstream_review_labelled_elsewhere_total") for w in (first, second)) == 16


#: Where Faust (0.15.3) mounts its own views: tables, routing, statistics, graph, index.
FAUST_VIEWS = ("/", "/table/", "/table/accounts/", "/table/accounts/{account}/",
               "/table/decisions/", "/table/decisions/{transaction}/", "/router/",
               "/router/accounts/{account}/", "/stats/", "/assignment/", "/graph/", "/performance/")


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_only_flagstreams_routes_answer_and_the_first_token_is_printed_not_logged(settings, worker_factory):
    worker = worker_factory(**FLAG_EVERYTHING, review_token=Secret(""))  # no token configured, none made

    # --- a first token for "admin": on the console once, on a line of its own, never logged
    output = worker.run_log().decode()
    token = output.split("Sign in at /review/login with it:")[1].split()[0]
    assert output.count(token) == 1
    assert [line.strip() for line in output.splitlines() if token in line] == [token]
    api = Api(worker.url, token)

    # --- state worth stealing: an account row and the decision the learner recorded -------
    produce_json(settings, "transactions", [transaction(TARGET, "c-7", "m-1", 75.0, 1)], "account_id")
    wait_until(lambda: worker.metric("flagstream_decisions_recorded_total") >= 1,
               what="the learner to record the decision")
    [item] = wait_until(api.items, what="the flag in the queue")
    status, body = api.call(f"/review/api/items/{item['id']}/decision", {"label": "fraud"})
    assert status == 200 and body["feedback"]["reviewer"] == "admin"

    # --- Faust's own views: not there, with or without a token --------------------------
    for template in FAUST_VIEWS:
        path = template.format(account="c-7", transaction=TARGET)
        for credential in (None, token):
            status, body = get(worker.url + path, credential)
            assert status in {401, 404}, f"{path} answered {status}: {body[:200]!r}"
            assert b"c-7" not in body and TARGET.encode() not in body and b"accounts" not in body
    assert get(worker.url + "/healthz")[0] == 200 and "flagstream_events_in_total" in worker.metrics()

    # --- wrong bearer tokens: throttled per address, then even the right one is refused ---
    wrong = [Api(worker.url, f"guess-{i}").call("/review/api/queue")[0] for i in range(10)]
    assert wrong == [401] * 10
    assert Api(worker.url, "guess-x").call("/review/api/queue")[0] == 429
    assert api.call("/review/api/queue")[0] == 429

    # --- a restart with the same data: the token is not printed again, and still works ----
    worker.stop()
    again = worker_factory(**FLAG_EVERYTHING, review_token=Secret(""))
    assert token.encode() not in again.run_log() and b"Sign in at /review/login" not in again.run_log()
    assert Api(again.url, token).call("/review/api/session") == (
        200, {"reviewer": "admin", "csrf_token": None, "claim_seconds": 120.0})
