"""The chat page in a real browser: two users chat at once and each sees only their own.

A real `chatlog serve --dev --bot echo` process (uvicorn), a real projector, real Kafka
and Redis, and Debian's Chromium driven headless by selenium through chromedriver
(`dev.browser` installs both with apt-get on a fresh machine). Nothing is mocked: the
page signs in with the development login, starts sessions, sends messages over the /v1
API, and shows what the event stream brings, the stand-in bot's replies included.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from chatlog.gateway.bots import reply_id
from chatlog.gateway.fastapi_page import CONTENT_SECURITY_POLICY
from chatlog.settings import Settings
from dev.browser import headless_chromium
from tests.processes import (
    ROOT,
    delete_prefix,
    run_shell,
    running_gateway,
    running_projector,
    unique_settings,
)

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = pytest.mark.integration

SECRET = "page-tests-" + uuid.uuid4().hex
WAIT_S = 60.0  # a loaded 2-core machine projects in well under this


@dataclass
class DevGateway:
    url: str
    settings: Settings

    def token(self, user: str, tenant: str = "default") -> str:
        answer = httpx.post(
            f"{self.url}/dev/token", json={"user": user, "tenant": tenant}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["token"]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory) -> Iterator[DevGateway]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = unique_settings(kafka, redis_url, prefix, auth_secret=SECRET, read_timeout_s=30.0)
    logs = tmp_path_factory.mktemp("page")
    try:
        with (
            running_projector(settings, log=logs / "projector.log"),
            running_gateway(
                settings, log=logs / "serve.log", args=["--dev", "--bot", "echo"]
            ) as url,
        ):
            yield DevGateway(url, settings)
    finally:
        delete_prefix(redis_url, prefix)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


# -- over HTTP ---------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy(gateway):
    page = httpx.get(f"{gateway.url}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script: every <script> loads a file of this origin.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.DOTALL)
    assert scripts
    assert all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        answer = httpx.get(f"{gateway.url}/static/{name}", timeout=30)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(kind)
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for path in ("/static/../pyproject.toml", "/static/%2e%2e%2fpyproject.toml", "/static/x.js"):
        assert httpx.get(f"{gateway.url}{path}", timeout=30).status_code == 404


def test_the_dev_login_mints_a_token_the_api_accepts_for_that_user_only(gateway):
    alice, bob = user(), user()
    made = httpx.post(
        f"{gateway.url}/v1/sessions",
        json={"title": "mine"},
        headers=gateway.auth(alice),
        timeout=60,
    )
    assert made.status_code == 201, made.text
    mine = httpx.get(f"{gateway.url}/v1/sessions", headers=gateway.auth(alice), timeout=30)
    theirs = httpx.get(f"{gateway.url}/v1/sessions", headers=gateway.auth(bob), timeout=30)
    assert [s["session_id"] for s in mine.json()["sessions"]] == [made.json()["session_id"]]
    assert theirs.json()["sessions"] == []
    bad = httpx.post(f"{gateway.url}/dev/token", json={"user": "a:b"}, timeout=30)
    assert bad.status_code == 422
    assert "user_id contains ':'" in bad.json()["error"]["message"]


def test_the_dev_login_curl_of_the_docs_runs(gateway):
    text = (ROOT / "docs" / "http.md").read_text(encoding="utf-8")
    section = text.split("## The chat page and development mode", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    # The curl command and its continuation line; the servers above it run until stopped.
    curl = block[block.index("curl ") :].replace("http://127.0.0.1:8000", gateway.url)
    answer = json.loads(run_shell(gateway.settings, curl, gateway=gateway.url).stdout)
    assert answer["expires_in"] == 28800
    listed = httpx.get(
        f"{gateway.url}/v1/sessions",
        headers={"Authorization": f"Bearer {answer['token']}"},
        timeout=30,
    )
    assert listed.status_code == 200


def test_the_echo_bot_answers_each_user_message_once_as_that_user(gateway):
    alice = user()
    headers = gateway.auth(alice)
    session = httpx.post(f"{gateway.url}/v1/sessions", headers=headers, timeout=60).json()[
        "session_id"
    ]
    url = f"{gateway.url}/v1/sessions/{session}"
    for _ in range(2):  # a retried request (same key): stored once, answered once
        sent = httpx.post(
            f"{url}/messages",
            json={"role": "user", "content": "parrot-canary"},
            headers={**headers, "Idempotency-Key": "msg-1"},
            timeout=60,
        )
        assert sent.status_code == 201, sent.text

    def messages() -> list[dict]:
        return httpx.get(f"{url}/context", headers=headers, timeout=60).json()["messages"]

    wait_for(lambda: any(m["role"] == "assistant" for m in messages()), what="the bot's reply")
    time.sleep(1.0)  # a second reply, were there one, would have come by now
    assert [(m["message_id"], m["role"], m["name"], m["content"]) for m in messages()] == [
        ("msg-1", "user", None, "parrot-canary"),
        (reply_id("msg-1"), "assistant", "echo", "You said: parrot-canary (turn 1 of this chat)"),
    ]


# -- in the browser ------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], object],
    *,
    what: str,
    timeout: float = WAIT_S,
    shown: Callable[[], object] | None = None,
) -> None:
    """Poll `predicate`; fail naming `what` (and what `shown` says is on the page)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = f"; the page shows {shown()}" if shown is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(0.1)


@dataclass
class Browser:
    """One user's browser on the page, with the few gestures the test needs."""

    driver: WebDriver
    name: str

    def find(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def sign_in(self, url: str) -> None:
        self.driver.get(url)
        self.find("login-user").send_keys(self.name)
        self.find("login-submit").click()
        wait_for(lambda: self.find("chat").is_displayed(), what=f"{self.name} to sign in")

    def new_session(self) -> str:
        before = set(self.session_ids())
        self.find("new-session").click()
        wait_for(lambda: self.find("message-input").is_enabled(), what="the session to open")
        wait_for(lambda: set(self.session_ids()) - before, what="the new session in the list")
        [made] = set(self.session_ids()) - before
        return made

    def send(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find("message-input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        wait_for(lambda: self.find("message-input").get_attribute("value") == "", what="send")

    def messages(self) -> list[tuple[str, str]]:
        """(role, content) of each message shown, read from the page's elements."""
        shown = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages .message'), li => "
            "[li.className.replace('message role-', ''), "
            "li.querySelector('.content').textContent]);"
        )
        return [(role, content) for role, content in shown]

    def session_ids(self) -> list[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#sessions li'), "
            "li => li.dataset.sessionId);"
        )

    def page_text(self) -> str:
        return self.driver.execute_script("return document.documentElement.textContent;")

    def live_state(self) -> str:
        return self.find("live-status").get_attribute("data-state") or ""


@pytest.fixture
def browsers(tmp_path) -> Iterator[tuple[Browser, Browser]]:
    # Two profiles: two users with nothing shared, not even the tab's storage.
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = headless_chromium(profile_dir=tmp_path / "first")
    try:
        second = headless_chromium(profile_dir=tmp_path / "second")
        try:
            yield Browser(first, user()), Browser(second, user())
        finally:
            second.quit()
    finally:
        first.quit()


def test_two_users_chat_at_once_and_each_sees_only_their_own(gateway, browsers):
    alice, bob = browsers
    canary = {
        b.name: [f"canary-{b.name}-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)] for b in browsers
    }
    for b in browsers:
        b.sign_in(gateway.url)
    sessions = {b.name: b.new_session() for b in browsers}
    for b in browsers:
        assert b.live_state() == "live", f"{b.name}'s page does not follow the event stream"

    # Turn by turn, the two at the same time: each reply comes from the bot in the
    # background, so it reaches the page only through the live updates (no reload).
    for turn in range(3):
        for b in browsers:
            b.send(canary[b.name][turn])
        for b in browsers:
            expected_reply = f"You said: {canary[b.name][turn]} (turn {2 * turn + 1} of this chat)"
            wait_for(
                lambda b=b, r=expected_reply: ("assistant", r) in b.messages(),
                what=f"{b.name} to see the bot's reply to turn {turn}",
                shown=b.messages,
            )
        # After every turn as well as at the end: a word shown and later replaced leaks too.
        for me, other in [(alice, bob), (bob, alice)]:
            text = me.page_text()
            assert not any(word in text for word in canary[other.name]), "cross-talk"

    for me, other in [(alice, bob), (bob, alice)]:
        shown = me.messages()
        assert [content for role, content in shown if role == "user"] == canary[me.name]
        assert len([role for role, _ in shown if role == "assistant"]) == 3
        text = me.page_text()
        assert all(word in text for word in canary[me.name])
        assert not any(word in text for word in canary[other.name]), "cross-talk on the page"
        assert other.name not in text
        assert me.session_ids() == [sessions[me.name]]
        assert sessions[other.name] not in text

    # What each page shows is what the API holds for that user, and only that.
    for b in browsers:
        held = httpx.get(
            f"{gateway.url}/v1/sessions/{sessions[b.name]}/context",
            headers=gateway.auth(b.name),
            timeout=60,
        ).json()["messages"]
        assert [(m["role"], m["content"]) for m in held] == b.messages()

    for b in browsers:
        errors = [e for e in b.driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], f"{b.name}'s console: {errors}"


def test_what_a_user_types_is_shown_as_text_never_run(gateway, browsers):
    alice, _ = browsers
    alice.sign_in(gateway.url)
    alice.new_session()
    attack = '<img src="x" onerror="document.title=\'pwned\'"><b>bold-canary</b>'
    alice.send(attack)
    wait_for(lambda: ("user", attack) in alice.messages(), what="the message on the page")
    wait_for(lambda: len(alice.messages()) == 2, what="the bot's reply")
    time.sleep(0.5)
    assert alice.driver.title == "chatlog"
    markup = alice.driver.execute_script(
        "return document.querySelectorAll('#messages img, #messages b').length;"
    )
    assert markup == 0


def test_the_page_follows_a_close_a_reopening_message_and_an_erasure(gateway, browsers):
    alice, _ = browsers
    alice.sign_in(gateway.url)
    session = alice.new_session()
    alice.send("before-close")
    wait_for(lambda: len(alice.messages()) == 2, what="the bot's reply", shown=alice.messages)
    url = f"{gateway.url}/v1/sessions/{session}"
    headers = gateway.auth(alice.name)

    assert httpx.post(f"{url}/close", headers=headers, timeout=60).status_code == 200
    wait_for(lambda: alice.live_state() == "closed", what="the page to see the close")
    # A message opens it again, and the page follows its stream again.
    alice.send("after-close")
    wait_for(
        lambda: ("assistant", "You said: after-close (turn 3 of this chat)") in alice.messages(),
        what="the reply in the reopened session",
        shown=alice.messages,
    )
    assert alice.live_state() == "live"

    assert httpx.delete(url, headers=headers, timeout=60).status_code == 200
    wait_for(lambda: alice.live_state() == "ended", what="the page to see the erasure")
    assert alice.find("chat-error").text == "This session was erased."
    assert not alice.find("message-input").is_enabled()
    wait_for(lambda: alice.session_ids() == [], what="the erased session to leave the list")
