"""Closed doors on the review page, without a broker: whose token acts, throttles, sessions, cookies.

Each test shuts one finding of issue #11 ("Ports"): a token acts only as its own
reviewer, wrong bearer tokens are throttled like the sign-in form, sessions end after
an absolute lifetime, cookies can be marked Secure behind a TLS proxy, and a token the
worker makes is printed once on the console, never logged. The same doors on a real
worker: tests/test_review_page.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from http.cookies import SimpleCookie

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from flagstream.errors import ConfigurationError
from flagstream.sinks.review.auth import LOGIN_COOKIE, SESSION_COOKIE, ReviewAuth
from flagstream.sinks.review.credentials import REVIEWERS_FILE, ReviewerTokens
from flagstream.sinks.review.service import ReviewService
from flagstream.sinks.review.views import ReviewRoutes
from flagstream.streams.config import Secret, Settings

ANA, BEN = "token-of-ana-0123456789", "token-of-ben-0123456789"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flagged(i: int) -> dict:
    return {"transaction_id": f"t-{i:05d}", "account_id": "c-1", "merchant_id": "m-1", "amount": 10.0,
            "currency": "USD", "score": 0.9, "threshold": 0.5, "decision": "review",
            "model_version": "lr-000001", "event_time": "2018-04-01T10:00:00Z",
            "event_time_ms": 1_522_576_800_000 + i}


class Page:
    """The review routes on an aiohttp test server, with what they published."""

    def __init__(self, tokens: ReviewerTokens | None = None, clock: Clock | None = None,
                 secure_cookies: bool = False, **auth_options) -> None:
        if tokens is None:
            tokens = ReviewerTokens(None)
            tokens.allow("ana", ANA)
            tokens.allow("ben", BEN)
        self.clock = clock or Clock()
        self.sent: list[tuple[bytes, dict]] = []

        async def publish(key: bytes, value: bytes) -> None:
            self.sent.append((key, json.loads(value)))

        self.service = ReviewService(publish, CollectorRegistry(), clock=self.clock)
        for i in range(5):
            self.service.ingest(flagged(i))
        self.auth = ReviewAuth(tokens, clock=self.clock, **auth_options)
        routes = ReviewRoutes(self.service, self.auth, secure_cookies=secure_cookies)
        self.client = TestClient(TestServer(routes.application()))

    def item(self, n: int = 0) -> str:
        return self.service.queue.page(0, 10)[1][n].item_id

    async def sign_in(self, token: str, **extra: str):
        page = await self.client.get("/review/login")
        nonce = (await page.text()).split('name="csrf_token" value="')[1].split('"')[0]
        return await self.client.post("/review/login", data={"csrf_token": nonce, "token": token, **extra},
                                      allow_redirects=False)

    async def csrf(self) -> str:
        return (await (await self.client.get("/review/api/session")).json())["csrf_token"]


@pytest.fixture
async def page():
    p = Page()
    await p.client.start_server()
    try:
        yield p
    finally:
        await p.client.close()


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


# --- a token acts as its reviewer, and only as them --------------------------------------
async def test_a_reviewers_token_cannot_act_as_another_reviewer(page):
    client = page.client
    as_ben = bearer(ANA, **{"X-Reviewer": "ben"})
    for path in (f"/review/api/items/{page.item(0)}/claim", f"/review/api/items/{page.item(0)}/decision"):
        refused = await client.post(path, json={"label": "legit"}, headers=as_ben)
        assert refused.status == 403, path
    assert page.sent == [] and page.service.queue.page(0, 10)[1][0].claimed_by(page.clock()) is None

    session = await (await client.get("/review/api/session", headers=bearer(ANA))).json()
    assert session["reviewer"] == "ana"
    decided = await client.post(f"/review/api/items/{page.item(0)}/decision", json={"label": "fraud"},
                                headers=bearer(ANA, **{"X-Reviewer": "ana"}))
    assert decided.status == 200
    assert [value["reviewer"] for _, value in page.sent] == ["ana"]

    # the sign-in form takes a token only: a name sent along changes nothing
    assert (await page.sign_in(ANA, reviewer="ben")).status == 303
    csrf = await page.csrf()
    assert (await (await client.get("/review/api/session")).json())["reviewer"] == "ana"
    url = f"/review/api/items/{page.item(0)}/decision"
    as_ben = await client.post(url, json={"label": "legit"},
                               headers={"X-CSRF-Token": csrf, "X-Reviewer": "ben"})
    assert as_ben.status == 403 and len(page.sent) == 1
    ok = await client.post(url, json={"label": "legit"}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and page.sent[-1][1]["reviewer"] == "ana"


async def test_the_sign_in_form_has_no_name_field(page):
    html = await (await page.client.get("/review/login")).text()
    assert 'name="token"' in html and 'name="reviewer"' not in html


# --- wrong bearer tokens are throttled like the sign-in form --------------------------------
async def test_wrong_bearer_tokens_are_throttled_and_then_even_the_right_one_is_refused(page):
    client = page.client
    statuses = [(await client.get("/review/api/queue", headers=bearer(f"guess-{i}"))).status
                for i in range(page.auth.max_failures)]
    assert statuses == [401] * page.auth.max_failures
    locked = await client.get("/review/api/queue", headers=bearer("guess-x"))
    assert locked.status == 429 and 0 < int(locked.headers["Retry-After"]) <= page.auth.failure_window
    right = await client.get("/review/api/queue", headers=bearer(ANA))
    assert right.status == 429, "the right token is refused while the address is locked out"
    assert (await page.sign_in(ANA)).status == 429, "the sign-in form shares the lock"
    write = await client.post(f"/review/api/items/{page.item(0)}/decision", json={"label": "fraud"},
                              headers=bearer(ANA))
    assert write.status == 429 and page.sent == []

    page.clock.now += page.auth.failure_window + 1
    assert (await client.get("/review/api/queue", headers=bearer(ANA))).status == 200


async def test_wrong_tokens_on_the_form_lock_out_bearer_tokens_too(page):
    for _ in range(page.auth.max_failures):
        assert (await page.sign_in("guess")).status == 401
    assert (await page.client.get("/review/api/queue", headers=bearer(BEN))).status == 429


# --- sessions: an absolute lifetime, and they end with their token -------------------------
async def test_a_session_ends_after_its_lifetime_however_busy():
    clock = Clock()
    page = Page(clock=clock, idle_seconds=3_600, lifetime_seconds=4 * 3_600)
    await page.client.start_server()
    try:
        signed_in = await page.sign_in(ANA)
        cookie = next(m for h in signed_in.headers.getall("Set-Cookie")
                      for m in SimpleCookie(h).values() if m.key == SESSION_COOKIE)
        assert cookie["max-age"] == str(4 * 3_600), "the browser drops it at the same time"
        for _ in range(7):  # used every 30 minutes: never idle
            clock.now += 1_800
            assert (await page.client.get("/review/api/session")).status == 200
        clock.now += 1_801  # 4 h and a second after signing in
        assert (await page.client.get("/review/api/session")).status == 401
    finally:
        await page.client.close()


def test_the_lifetime_is_a_setting_with_a_twelve_hour_default():
    assert Settings().review_session_lifetime_s == 12 * 3_600
    s = Settings.from_env({"FLAGSTREAM_REVIEW_SESSION_LIFETIME_S": "600"})
    assert s.review_session_lifetime_s == 600.0
    with pytest.raises(ConfigurationError, match="FLAGSTREAM_REVIEW_SESSION_LIFETIME_S"):
        Settings.from_env({"FLAGSTREAM_REVIEW_SESSION_LIFETIME_S": "0"})


async def test_withdrawing_or_replacing_a_token_ends_its_sessions(tmp_path):
    path = tmp_path / REVIEWERS_FILE
    operator = ReviewerTokens(path)  # what `flagstream review-tokens` does, in another process
    ana, ben = operator.add("ana"), operator.add("ben")
    page = Page(tokens=ReviewerTokens(path))
    await page.client.start_server()
    try:
        assert (await page.sign_in(ana)).status == 303
        assert (await page.client.get("/review/api/session")).status == 200
        operator.remove("ana")
        assert (await page.client.get("/review/api/session")).status == 401
        assert (await page.client.get("/review/api/queue", headers=bearer(ana))).status == 401
        assert (await page.client.get("/review/api/queue", headers=bearer(ben))).status == 200
        new_ben = operator.add("ben")
        assert (await page.client.get("/review/api/queue", headers=bearer(ben))).status == 401
        assert (await page.client.get("/review/api/queue", headers=bearer(new_ben))).status == 200
    finally:
        await page.client.close()


# --- cookies ---------------------------------------------------------------------------------
async def _cookies(page: Page) -> dict[str, dict]:
    login_page = await page.client.get("/review/login")
    nonce = (await login_page.text()).split('name="csrf_token" value="')[1].split('"')[0]
    page.client.session.cookie_jar.clear()  # a Secure cookie would not come back over http
    signed_in = await page.client.post("/review/login", data={"csrf_token": nonce, "token": ANA},
                                       headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
                                       allow_redirects=False)
    out = {}
    for response in (login_page, signed_in):
        for header in response.headers.getall("Set-Cookie"):
            morsel = next(iter(SimpleCookie(header).values()))
            if morsel.value:
                out[morsel.key] = {"secure": bool(morsel["secure"]), "httponly": bool(morsel["httponly"]),
                                   "samesite": morsel["samesite"]}
    return out


@pytest.mark.parametrize("secure", [False, True])
async def test_cookies_are_httponly_strict_and_secure_when_set_behind_a_tls_proxy(secure):
    page = Page(secure_cookies=secure)
    await page.client.start_server()
    try:
        cookies = await _cookies(page)
    finally:
        await page.client.close()
    assert set(cookies) == {LOGIN_COOKIE, SESSION_COOKIE}
    for name, cookie in cookies.items():
        assert cookie == {"secure": secure, "httponly": True, "samesite": "Strict"}, name


def test_secure_cookies_is_a_setting():
    assert Settings().web_secure_cookies is False
    assert Settings.from_env({"FLAGSTREAM_WEB_SECURE_COOKIES": "1"}).web_secure_cookies is True


# --- no default token; a made one is printed once, never logged -------------------------------
@pytest.mark.parametrize("token", ["change-me", "short"])
def test_a_guessable_configured_token_is_refused(token):
    with pytest.raises(ConfigurationError, match="FLAGSTREAM_REVIEW_TOKEN"):
        Settings.from_env({"FLAGSTREAM_REVIEW_TOKEN": token})


def test_a_made_token_is_printed_once_on_the_console_and_never_logged(tmp_path, capsys, caplog):
    from flagstream.streams.agents import build_app
    from flagstream.streams.review_access import ADMIN, reviewer_tokens

    settings = Settings(data_dir=str(tmp_path / "data"), review_token=Secret(""))
    with caplog.at_level(logging.DEBUG):
        first = build_app(settings, "learner")
        asyncio.run(first.stop())
        printed = capsys.readouterr().out
        second = build_app(settings, "learner")  # a restart: tokens exist, nothing is printed
        asyncio.run(second.stop())
    token = printed.split("Sign in at /review/login with it:")[1].split()[0]
    assert len(token) >= 40 and printed.count(token) == 1
    assert token not in caplog.text, "the token reached the logging system"
    assert capsys.readouterr().out == "", "printed once, not at every start"
    assert reviewer_tokens(settings).match(token).reviewer == ADMIN
    stored = settings.data_path / REVIEWERS_FILE
    assert token not in stored.read_text(), "only its hash is kept"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_a_configured_token_is_the_admins_and_nothing_is_made(tmp_path, capsys):
    from flagstream.streams.agents import build_app
    from flagstream.streams.review_access import ADMIN, reviewer_tokens

    settings = Settings(data_dir=str(tmp_path / "data"), review_token=Secret("configured-token-123"))
    p = build_app(settings, "learner")
    asyncio.run(p.stop())
    assert capsys.readouterr().out == ""
    assert reviewer_tokens(settings).match("configured-token-123").reviewer == ADMIN
    assert not (settings.data_path / REVIEWERS_FILE).exists()


def test_review_tokens_command_prints_a_token_once_and_keeps_its_hash(tmp_path, capsys):
    from flagstream.streams.review_access import run

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FLAGSTREAM_DATA_DIR": str(tmp_path)}
    added = subprocess.run([sys.executable, "-m", "flagstream", "review-tokens", "add", "Ana Ruiz"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    token = added.stdout.split()[-1]
    stored = tmp_path / REVIEWERS_FILE
    assert token not in stored.read_text() and token not in added.stderr
    assert ReviewerTokens(stored).match(token).reviewer == "Ana Ruiz"

    settings = Settings(data_dir=str(tmp_path))

    def flagstream(action: str, name: str | None = None) -> tuple[int, str]:
        status = run(argparse.Namespace(action=action, name=name), settings)
        return status, capsys.readouterr().out

    assert flagstream("list") == (0, "Ana Ruiz\n")
    assert flagstream("add", "bad\nname")[0] == 2 and flagstream("add")[0] == 2
    assert flagstream("remove", "Ana Ruiz")[0] == 0
    assert ReviewerTokens(stored).match(token) is None and flagstream("list") == (0, "")
    assert flagstream("remove", "Ana Ruiz")[0] == 1
