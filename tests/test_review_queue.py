"""The review queue, claims, masking, decisions and the web routes, without a broker or browser."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from flagstream.cards import mask_card_numbers
from flagstream.codec import loads
from flagstream.sinks.review.auth import LOGIN_COOKIE, SESSION_COOKIE, ReviewAuth
from flagstream.sinks.review.credentials import ReviewerTokens
from flagstream.sinks.review.queue import (
    AlreadyLabelled,
    ClaimConflict,
    NotQueued,
    ReviewQueue,
    item_id_for,
)
from flagstream.sinks.review.service import InvalidDecision, ReviewService
from flagstream.sinks.review.views import ReviewRoutes

PAN = "4111111111111111"
TOKENS = {"ana": "token-of-ana-0123456789", "ben": "token-of-ben-0123456789"}


def reviewer_tokens() -> ReviewerTokens:
    tokens = ReviewerTokens(None)
    for name, token in TOKENS.items():
        tokens.allow(name, token)
    return tokens


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flag(i: int, score: float, scored_at_ms: int | None = None, **extra) -> dict:
    record = {
        "transaction_id": f"t-{i:05d}", "account_id": f"c-{i % 7}", "merchant_id": f"m-{i % 3}",
        "amount": 10.0 + i, "currency": "USD", "score": score, "threshold": 0.5, "decision": "review",
        "model_version": "lr-000001", "event_time": "2018-04-01T10:00:00Z",
        "event_time_ms": 1_522_576_800_000 + i, "reasons": [{"text": "amount 6.2× this card's average"}],
    }
    if scored_at_ms is not None:
        record["scored_at_ms"] = scored_at_ms
    record.update(extra)
    return record


# --- ordering, paging, bounds ---------------------------------------------------------
def test_orders_by_score_then_age_and_pages_through_a_thousand_items():
    q = ReviewQueue(clock=Clock())
    for i in range(1_000):
        q.add(flag(i, round((i * 37 % 100) / 100, 2), scored_at_ms=1_000_000 + i))
    total, first = q.page(0, 50)
    assert total == 1_000 and len(first) == 50
    seen = []
    for offset in range(0, 1_000, 50):
        seen.extend(q.page(offset, 50)[1])
    assert len({i.item_id for i in seen}) == 1_000
    keys = [(-i.score, i.flagged_at) for i in seen]
    assert keys == sorted(keys), "score descending, then oldest first"
    by_age = q.page(0, 1_000, sort="age")[1]
    assert [i.flagged_at for i in by_age] == sorted(i.flagged_at for i in by_age)
    assert q.page(990, 50)[1] == seen[990:]
    with pytest.raises(ValueError):
        q.page(0, 10, sort="amount")


def test_bounded_keeps_the_highest_scores_and_counts_what_it_drops():
    q = ReviewQueue(max_items=3, clock=Clock())
    for i, score in enumerate([0.5, 0.9, 0.7]):
        q.add(flag(i, score))
    assert q.add(flag(3, 0.1)) is None, "lower than everything queued: dropped"
    assert q.add(flag(4, 0.8)) is not None, "evicts the lowest (0.5)"
    assert sorted(i.score for i in q.page(0, 10)[1]) == [0.7, 0.8, 0.9]
    assert q.dropped == 2 and len(q) == 3


def test_duplicates_and_decided_transactions_are_not_queued_again():
    q = ReviewQueue(clock=Clock())
    item = q.add(flag(1, 0.9))
    assert q.add(flag(1, 0.9)) is None
    q.take(item.item_id, "ana")
    assert q.add(flag(1, 0.9)) is None, "a re-delivered record must not come back after a decision"
    assert q.mark_decided(["t-00002"]) == 0 and q.add(flag(2, 0.5)) is None


def test_drop_partitions_forgets_only_their_items():
    q = ReviewQueue(clock=Clock())
    q.add(flag(1, 0.9), partition=0)
    q.add(flag(2, 0.8), partition=1)
    assert q.drop_partitions([0]) == 1
    assert [i.transaction_id for i in q.page(0, 10)[1]] == ["t-00002"]


# --- claims ---------------------------------------------------------------------------
def test_claims_are_exclusive_renewable_and_expire():
    clock = Clock()
    q = ReviewQueue(claim_seconds=120, clock=clock)
    item = q.add(flag(1, 0.9))
    q.claim(item.item_id, "ana")
    with pytest.raises(ClaimConflict) as conflict:
        q.claim(item.item_id, "ben")
    assert conflict.value.claim.reviewer == "ana" and conflict.value.remaining == 120
    with pytest.raises(ClaimConflict):
        q.take(item.item_id, "ben")
    clock.now += 100
    assert q.claim(item.item_id, "ana").expires_at == clock.now + 120, "renewal"
    clock.now += 119
    with pytest.raises(ClaimConflict):
        q.claim(item.item_id, "ben")
    clock.now += 2
    assert q.claim(item.item_id, "ben").reviewer == "ben", "an expired claim is free"
    assert q.release(item.item_id, "ana") is False
    assert q.release(item.item_id, "ben") is True
    assert q.take(item.item_id, "cy").transaction_id == "t-00001", "unclaimed: anyone may decide"
    with pytest.raises(NotQueued):
        q.claim(item.item_id, "ana")


def test_put_back_restores_an_item_whose_decision_failed():
    q = ReviewQueue(clock=Clock())
    item = q.take(q.add(flag(1, 0.9)).item_id, "ana")
    q.put_back(item)
    assert item.item_id in q and not q.is_decided("t-00001")


# --- masking --------------------------------------------------------------------------
def test_card_numbers_are_masked_everywhere_a_reviewer_could_see_them():
    spaced = f"pan {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}"
    record = flag(1, 0.9, account_id=PAN, card_number=PAN, note=spaced,
                  features={"amount": 12.0}, nested=[{"pan": int(PAN)}])
    q = ReviewQueue(clock=Clock())
    item = q.add(record)
    shown = str(item.record) + str(item.summary(0.0))
    assert PAN not in shown and "4111 1111" not in shown and "****1111" in shown
    assert item.account_id == PAN, "the raw id stays internal, for history lookups"
    assert PAN not in item.item_id and item.item_id == item_id_for("t-00001")
    assert mask_card_numbers({"event_time_ms": 1_522_576_800_000}) == {"event_time_ms": 1_522_576_800_000}


# --- the decision workflow ------------------------------------------------------------
def service(clock=None, fail=False):
    sent: list[tuple[bytes, dict]] = []

    async def publish(key: bytes, value: bytes) -> None:
        if fail:
            raise ConnectionError("broker down")
        sent.append((key, loads(value)))

    registry = CollectorRegistry()
    return ReviewService(publish, registry, clock=clock or Clock()), sent, registry


def test_decision_publishes_feedback_and_updates_histories_and_metrics():
    svc, sent, registry = service()
    for i in (0, 7, 14):  # same card c-0, merchants m-0, m-1, m-2
        svc.ingest(flag(i, 0.6 + i / 100))
    item = svc.queue.page(0, 1)[1][0]
    assert item.transaction_id == "t-00014"
    svc.queue.claim(item.item_id, "ana")
    fb = asyncio.run(svc.decide(item.item_id, "ana", "fraud", note=f"card {PAN}"))
    key, value = sent[0]
    assert key == b"t-00014"
    assert set(value) == {"transaction_id", "label", "source", "reviewer", "note", "decided_at"}
    assert value["label"] == "fraud" and value["source"] == "review" and value["reviewer"] == "ana"
    assert PAN not in value["note"] and value["decided_at"].endswith("Z")
    assert fb["label"] == "fraud" and len(svc.queue) == 2
    other = svc.queue.page(0, 1)[1][0]
    detail = svc.detail(other.item_id)
    labels = {e["transaction_id"]: e.get("label") for e in detail["account_history"]}
    assert labels["t-00014"] == "fraud" and other.transaction_id not in labels
    assert svc.merchants.get("m-2")[0]["transaction_id"] == "t-00014"
    asyncio.run(svc.decide(other.item_id, "ben", "legit"))
    text = generate_latest(registry).decode()
    assert 'flagstream_review_decisions_total{label="fraud",reviewer="ana"} 1.0' in text
    assert "flagstream_review_queue_depth 1.0" in text
    assert "flagstream_review_overturn_rate 0.5" in text


def test_a_failed_publish_leaves_the_item_in_the_queue():
    svc, _, _ = service(fail=True)
    item = svc.ingest(flag(1, 0.9))
    with pytest.raises(ConnectionError):
        asyncio.run(svc.decide(item.item_id, "ana", "fraud"))
    assert item.item_id in svc.queue


def test_invalid_decisions_are_refused_before_anything_changes():
    svc, sent, _ = service()
    item = svc.ingest(flag(1, 0.9))
    with pytest.raises(InvalidDecision):
        asyncio.run(svc.decide(item.item_id, "ana", "maybe"))
    with pytest.raises(InvalidDecision):
        asyncio.run(svc.decide(item.item_id, "  ", "fraud"))
    assert not sent and item.item_id in svc.queue
    assert svc.ingest({"no": "id"}) is None


# --- labels that come from elsewhere ---------------------------------------------------
def test_items_labelled_elsewhere_leave_the_queue_claimed_or_not_and_never_come_back():
    clock = Clock()
    q = ReviewQueue(clock=clock)
    free, claimed, kept = (q.add(flag(i, 0.9 - i / 10)) for i in (1, 2, 3))
    q.claim(claimed.item_id, "ana")
    assert q.labelled_elsewhere("t-00001", "legit by ben (review)") is free
    assert q.labelled_elsewhere("t-00002", "fraud (chargeback)") is claimed
    assert [i.transaction_id for i in q.page(0, 10)[1]] == ["t-00003"] and len(q) == 1
    assert q.stats()["depth"] == 1
    with pytest.raises(AlreadyLabelled, match=r"already labelled fraud \(chargeback\)"):
        q.take(claimed.item_id, "ana")
    with pytest.raises(AlreadyLabelled, match="already labelled legit by ben"):
        q.claim(free.item_id, "ana")
    assert q.add(flag(1, 0.9)) is None and q.add(flag(2, 0.9)) is None
    assert q.labelled_elsewhere("t-00004", "fraud (chargeback)") is None
    assert q.add(flag(4, 0.9)) is None, "a flag read after its label is not queued"
    assert kept.item_id in q


def test_an_item_being_decided_when_labelled_elsewhere_is_not_put_back():
    q = ReviewQueue(clock=Clock())
    item = q.take(q.add(flag(1, 0.9)).item_id, "ana")
    q.labelled_elsewhere("t-00001", "fraud (chargeback)")
    q.put_back(item)  # the page's own publish failed meanwhile
    assert item.item_id not in q and q.is_decided("t-00001")


def test_a_claimed_item_labelled_elsewhere_is_refused_on_submit_and_nothing_is_sent():
    svc, sent, registry = service()
    item = svc.ingest(flag(1, 0.9))
    other = svc.ingest(flag(8, 0.8))  # same card c-1
    svc.queue.claim(item.item_id, "ana")
    label = {"transaction_id": "t-00001", "label": "fraud", "source": "review", "reviewer": "ben",
             "decided_at": "2018-04-02T10:00:00.000Z"}
    assert svc.labelled_elsewhere(None, label) is True
    assert svc.labelled_elsewhere(None, label) is False, "a repeat removes nothing"
    with pytest.raises(AlreadyLabelled, match=r"already labelled fraud by ben \(review\)"):
        asyncio.run(svc.decide(item.item_id, "ana", "legit"))
    assert not sent and svc.decided == 0 and len(svc.queue) == 1
    history = {e["transaction_id"]: e.get("label") for e in svc.detail(other.item_id)["account_history"]}
    assert history["t-00001"] == "fraud", "the card's history shows the label from elsewhere"
    assert svc.merchants.get("m-1")[0]["transaction_id"] == "t-00001"
    svc.labelled_elsewhere(None, {"transaction_id": "t-00008", "label": "legit", "source": "auto"})
    svc.labelled_elsewhere(None, {"transaction_id": "t-00009", "label": "maybe"})
    text = generate_latest(registry).decode()
    assert ('flagstream_review_labelled_elsewhere_total{claimed="yes",source="review"} 1.0'
            in text)
    assert 'flagstream_review_labelled_elsewhere_total{claimed="no",source="auto"} 1.0' in text
    assert "flagstream_review_queue_depth 0.0" in text


# --- auth -----------------------------------------------------------------------------
def test_sessions_expire_when_idle_and_wrong_tokens_are_throttled():
    clock = Clock()
    tokens = ReviewerTokens(None)
    tokens.allow("ana", TOKENS["ana"])
    auth = ReviewAuth(tokens, idle_seconds=60, max_failures=3, clock=clock)
    session = auth.login(TOKENS["ana"])
    clock.now += 59
    assert auth.session(session.session_id) is session
    clock.now += 61
    assert auth.session(session.session_id) is None
    for _ in range(3):
        auth.failed("10.0.0.1")
    assert auth.throttled("10.0.0.1") and not auth.throttled("10.0.0.2")
    clock.now += 301
    assert not auth.throttled("10.0.0.1")


# --- the web routes, on an aiohttp test server ----------------------------------------
@pytest.fixture
async def web_client():
    svc, sent, _ = service()
    for i in range(3):
        svc.ingest(flag(i, 0.5 + i / 10))
    client = TestClient(TestServer(ReviewRoutes(svc, ReviewAuth(reviewer_tokens())).application()))
    await client.start_server()
    try:
        yield client, svc, sent
    finally:
        await client.close()


async def sign_in(client, name="ana") -> str:
    page = await client.get("/review/login")
    html = await page.text()
    nonce = html.split('name="csrf_token" value="')[1].split('"')[0]
    assert page.cookies[LOGIN_COOKIE].value == nonce
    resp = await client.post("/review/login", data={"csrf_token": nonce, "token": TOKENS[name]},
                             allow_redirects=False)
    assert resp.status == 303
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    return (await (await client.get("/review/api/session")).json())["csrf_token"]


async def test_routes_need_a_session_or_the_bearer_token(web_client):
    client, _, _ = web_client
    for path in ("/review/", "/review/api/queue", "/review/api/session"):
        assert (await client.get(path)).status == 401
    assert (await client.get("/review/api/queue", headers={"Authorization": "Bearer nope"})).status == 401
    resp = await client.get("/review/api/queue", headers={"Authorization": f"Bearer {TOKENS['ben']}"})
    assert resp.status == 200 and (await resp.json())["total"] == 3
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_login_needs_the_right_token_and_its_own_form(web_client):
    client, _, _ = web_client
    forged = await client.post("/review/login", data={"token": TOKENS["ana"]})
    assert forged.status == 403, "no login nonce: a cross-site login post"
    page = await client.get("/review/login")
    nonce = (await page.text()).split('name="csrf_token" value="')[1].split('"')[0]
    wrong = await client.post("/review/login", data={"csrf_token": nonce, "token": "no"})
    assert wrong.status == 401 and "Wrong token" in await wrong.text()


async def test_writes_need_the_sessions_csrf_token(web_client):
    client, svc, sent = web_client
    csrf = await sign_in(client)
    item = svc.queue.page(0, 1)[1][0]
    url = f"/review/api/items/{item.item_id}/decision"
    assert (await client.post(url, data={"label": "fraud"})).status == 403
    assert (await client.post(url, data={"label": "fraud", "csrf_token": "forged"})).status == 403
    assert (await client.post(url, json={"label": "fraud"}, headers={"X-CSRF-Token": "x"})).status == 403
    assert not sent and item.item_id in svc.queue
    ok = await client.post(url, json={"label": "fraud", "note": "n"}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and sent[0][1]["reviewer"] == "ana"
    assert (await client.post(url, json={"label": "fraud"}, headers={"X-CSRF-Token": csrf})).status == 404


async def test_claiming_an_item_someone_else_holds_is_a_conflict(web_client):
    client, svc, _ = web_client
    csrf = await sign_in(client, "ana")
    item = svc.queue.page(0, 1)[1][0]
    claim = await client.post(f"/review/api/items/{item.item_id}/claim", headers={"X-CSRF-Token": csrf})
    assert claim.status == 200 and (await claim.json())["claimed_by"] == "ana"
    bearer = {"Authorization": f"Bearer {TOKENS['ben']}"}
    other = await client.post(f"/review/api/items/{item.item_id}/claim", headers=bearer)
    assert other.status == 409 and (await other.json())["claimed_by"] == "ana"
    decide = await client.post(f"/review/api/items/{item.item_id}/decision", json={"label": "legit"},
                               headers=bearer)
    assert decide.status == 409
    queue = await (await client.get("/review/api/queue", headers=bearer)).json()
    assert queue["items"][0]["claimed_by"] == "ana"
    detail = await client.get(f"/review/api/items/{item.item_id}", headers=bearer)
    assert (await detail.json())["transaction_id"] == item.transaction_id


async def test_a_closing_tab_gives_its_claim_back_with_a_form_post(web_client):
    client, svc, _ = web_client
    csrf = await sign_in(client, "ana")
    item = svc.queue.page(0, 1)[1][0]
    await client.post(f"/review/api/items/{item.item_id}/claim", headers={"X-CSRF-Token": csrf})
    release = f"/review/api/items/{item.item_id}/release"
    assert (await client.post(release, data={"csrf_token": "forged"})).status == 403
    resp = await client.post(release, data={"csrf_token": csrf})  # what navigator.sendBeacon sends
    assert resp.status == 200 and (await resp.json())["released"] is True
    assert item.claimed_by(svc.clock()) is None
    logout = await client.post("/review/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert logout.status == 303 and (await client.get("/review/api/session")).status == 401


async def test_submitting_an_item_labelled_elsewhere_says_who_labelled_it(web_client):
    client, svc, sent = web_client
    csrf = await sign_in(client, "ana")
    item = svc.queue.page(0, 1)[1][0]
    headers = {"X-CSRF-Token": csrf}
    assert (await client.post(f"/review/api/items/{item.item_id}/claim", headers=headers)).status == 200
    svc.labelled_elsewhere(None, {"transaction_id": item.transaction_id, "label": "fraud",
                                  "source": "chargeback"})
    resp = await client.post(f"/review/api/items/{item.item_id}/decision", json={"label": "legit"},
                             headers=headers)
    body = await resp.json()
    assert resp.status == 409 and body["labelled_elsewhere"] is True
    assert body["error"] == "already labelled fraud (chargeback)"
    assert not sent, "no second label"
    detail = await client.get(f"/review/api/items/{item.item_id}", headers=headers)
    assert detail.status == 404 and (await detail.json())["error"] == "already labelled fraud (chargeback)"
    queue = await (await client.get("/review/api/queue", headers=headers)).json()
    assert queue["total"] == 2 and item.item_id not in {i["id"] for i in queue["items"]}


def test_a_flag_whose_decision_of_record_is_the_apis_fallback_is_not_queued():
    """The scoring API answered with its fallback before the worker decided: the worker's
    late flag still reaches the review topic, but its label would be refused (nothing was
    scored to learn from), so nobody is asked to review it."""
    recorded = {"t-1": {"transaction_id": "t-1", "decision": "review", "fallback": True},
                "t-2": {"transaction_id": "t-2", "decision": "review", "score": 0.9}}

    def decision_of_record(tx):
        if tx == "t-3":
            raise ValueError("unreadable row")
        return recorded.get(tx)

    registry = CollectorRegistry()

    async def publish(key, value):
        pass

    svc = ReviewService(publish, registry, clock=lambda: 0.0, decision_of_record=decision_of_record)
    flags = [{"transaction_id": t, "account_id": "c-1", "score": 0.9} for t in ("t-1", "t-2", "t-3", "t-4")]
    queued = [svc.ingest(f) is not None for f in flags]
    assert queued == [False, True, True, True], "only the fallback's flag stays out"
    assert registry.get_sample_value("flagstream_review_ingested_total", {"outcome": "fallback"}) == 1
