"""A real browser through nginx: headless Chromium logs into the admin, adds a Book, and finds it on /books/.

What the HTTP-level tests cannot show: the admin's styles, its login and CSRF check as a browser meets
them, the page's script under its Content-Security-Policy, and the live page updating without a reload.
Skipped without Chromium and its driver (CHROMIUM, CHROMEDRIVER below).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from harness.stack import ROOT, Stack

# The system's Chromium and its driver (Debian's `chromium` and `chromium-driver`; CI's .ci/run installs them),
# handed to Selenium by path so that nothing is downloaded at run time; $CHROMIUM and $CHROMEDRIVER name others.
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
# Screenshots: the admin after the book was added (admin-book-added.png) and the live page (live-page.png);
# with DOCS_SCREENSHOTS=1 the latter is also copied to docs/img/live-page.png, the documentation's picture.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
WAIT = 30  # seconds for any one page; the whole test takes a few
LIVE_WAIT = 10  # seconds for a new book to reach an open page: it takes well under one
DOCS_SCREENSHOTS = os.environ.get("DOCS_SCREENSHOTS") == "1"

# Headless, able to run as root (no sandbox), and nothing that phones home: the stack is all it talks to.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # straight to localhost, whatever the environment's proxy
    "--window-size=1280,900",
]

MISSING = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]

# Checked before any fixture, so that no stack is started for a test that cannot run.
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs Chromium and its driver, not installed: {', '.join(MISSING)} "
    "(Debian: apt-get install chromium chromium-driver)",
)


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with a profile (cookies) of its own, closed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # The network events, to read the HTTP status of a page (WebDriver has no API for it).
    # And the console, where the browser reports what a page's security headers refused.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # With the driver's path given, Selenium Manager never runs (it would download a driver).
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def second_browser() -> Iterator[webdriver.Chrome]:
    """Another user at the same time: a browser of its own, sharing nothing with `browser`."""
    with chromium() as driver:
        yield driver


def submit(driver: webdriver.Chrome, button: WebElement | None = None, form: WebElement | None = None) -> None:
    """Click a submit button (or send a form as if the page had no script) and wait until the next page has loaded."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    if button is not None:
        button.click()
    else:
        # form.submit() skips the form's submit listeners: the browser's own POST, as without JavaScript.
        driver.execute_script("arguments[0].submit();", form)

    def next_page_loaded(d: webdriver.Chrome) -> bool:
        try:
            old_page.tag_name  # noqa: B018 - raises once the old page is gone
            return False
        except StaleElementReferenceException:
            return d.execute_script("return document.readyState") == "complete"

    WebDriverWait(driver, WAIT).until(next_page_loaded)


def document_statuses(driver: webdriver.Chrome) -> list[tuple[str, str, int]]:
    """(method, URL, status) of each page (not subresource) loaded since the last call."""
    methods: dict[str, str] = {}
    pages = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent" and params.get("type") == "Document":
            if "redirectResponse" in params:  # the same request ID, followed to the next URL
                redirect = params["redirectResponse"]
                pages.append((methods.get(params["requestId"], "?"), redirect["url"], redirect["status"]))
            methods[params["requestId"]] = params["request"]["method"]
        elif event["method"] == "Network.responseReceived" and params.get("type") == "Document":
            response = params["response"]
            pages.append((methods.get(params["requestId"], "?"), response["url"], response["status"]))
    return pages


def test_browser_logs_in_adds_a_book_and_sees_it(stack: Stack, browser: webdriver.Chrome):
    """With its own cookie jar, Origin and Referer and CSS engine, through the proxy: the admin's stylesheets load
    from /static/ and apply, the login sets the session and CSRF cookies, the add form's POST passes the CSRF
    check, and the same POST without the form's token is refused with 403."""
    password = stack.create_superuser("browser")
    title = f"Browser book {secrets.token_hex(4)}"
    rejected = f"Tokenless book {secrets.token_hex(4)}"

    # The login page, reached like a visitor does: /admin/ redirects to it.
    browser.get(stack.url("/admin/"))
    assert browser.current_url == stack.url("/admin/login/?next=/admin/"), browser.current_url

    # The admin's stylesheets came from /static/ through nginx, were parsed, and apply.
    sheets = browser.execute_script(
        "return Array.from(document.styleSheets, sheet => {"
        "  try { return [sheet.href, sheet.cssRules.length]; }"
        "  catch (error) { return [sheet.href, String(error)]; }"  # a sheet that failed to load
        "});"
    )
    assert any("/static/admin/css/base." in href for href, _ in sheets), sheets
    for href, rules in sheets:
        assert href.startswith(stack.url("/static/")) and isinstance(rules, int) and rules > 0, sheets
    header = browser.execute_script("return getComputedStyle(document.getElementById('header')).backgroundColor;")
    assert header not in ("", "transparent", "rgba(0, 0, 0, 0)"), header  # base.css's --header-bg
    assert browser.execute_script(
        "return getComputedStyle(document.documentElement).getPropertyValue('--primary').trim();"
    ), "base.css's custom properties are not defined"

    # Log in through the form: the CSRF cookie and token from the login page must come back.
    browser.find_element(By.NAME, "username").send_keys("browser")
    browser.find_element(By.NAME, "password").send_keys(password)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]"))
    assert browser.current_url == stack.url("/admin/"), browser.find_element(By.TAG_NAME, "body").text[:2000]
    assert "Site administration" in browser.title
    cookies = {cookie["name"]: cookie for cookie in browser.get_cookies()}
    assert {"csrftoken", "sessionid"} <= cookies.keys(), cookies.keys()
    assert cookies["sessionid"]["httpOnly"], cookies["sessionid"]

    # The add form with its CSRF token removed: Django refuses the POST with 403.
    add_url = stack.url("/admin/books/book/add/")
    browser.get(add_url)
    browser.find_element(By.NAME, "title").send_keys(rejected)
    removed = browser.execute_script(
        "const inputs = document.querySelectorAll('#book_form input[name=csrfmiddlewaretoken]');"
        "inputs.forEach(input => input.remove());"
        "return inputs.length;"
    )
    assert removed == 1, removed
    document_statuses(browser)  # forget the pages so far
    submit(browser, browser.find_element(By.NAME, "_save"))
    assert document_statuses(browser) == [("POST", add_url, 403)]
    assert "CSRF verification failed" in browser.find_element(By.TAG_NAME, "body").text

    # The same form as served: the book is added, and the admin says so.
    browser.get(add_url)
    browser.find_element(By.NAME, "title").send_keys(title)
    document_statuses(browser)
    submit(browser, browser.find_element(By.NAME, "_save"))
    changelist = stack.url("/admin/books/book/")
    assert document_statuses(browser) == [("POST", add_url, 302), ("GET", changelist, 200)]
    assert browser.current_url == changelist
    messages = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".messagelist .success")]
    assert any(title in message and "added successfully" in message for message in messages), messages

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "admin-book-added.png"
    assert browser.save_screenshot(str(screenshot)), screenshot
    print(f"screenshot of the admin after adding {title!r}: {screenshot}")

    # The public listing, through the same proxy, has the new book and not the refused one.
    browser.get(stack.url("/books/"))
    listing = browser.find_element(By.TAG_NAME, "body").text.split(",")
    assert title in listing, listing
    assert rejected not in listing, listing


def test_the_pages_own_script_runs_under_its_policy_and_framing_follows_each_view(
    stack: Stack, browser: webdriver.Chrome
):
    """The index's inline script carries the nonce its Content-Security-Policy names, so it runs; the
    embeddable page shows in a frame, an ordinary page does not."""
    browser.get(stack.url("/"))
    browser.get_log("browser")  # forget the console so far
    browser.find_element(By.ID, "watch-events").click()
    shown = WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "event-time").text)
    assert shown.startswith("20"), shown  # an event's ISO time, put there by the script
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused, refused

    # Two of the site's pages in frames: the embeddable one shows, an ordinary one (DENY) does not.
    browser.execute_script(
        "for (const [id, src] of [['embed', '/books/embed/'], ['page', '/now/']]) {"
        "  const frame = document.createElement('iframe');"
        "  frame.id = id; frame.src = src; frame.onload = () => { frame.dataset.loaded = 'yes'; };"
        "  document.body.appendChild(frame);"
        "}"
    )
    loaded = "return ['embed', 'page'].every(id => document.getElementById(id).dataset.loaded === 'yes');"
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script(loaded))
    shown = (
        "const frame = document.getElementById(arguments[0]);"
        "try { return frame.contentDocument ? frame.contentDocument.title : null; }"
        "catch (error) { return null; }"  # the browser's own error page: another origin
    )
    assert browser.execute_script(shown, "embed") == "Books"  # app/books/templates/books/embed.html
    assert not browser.execute_script(shown, "page")  # refused: nothing of /now/ shows


LIVE = "return document.getElementById('live-state').dataset.state === 'live';"
LIVE_TITLES = "return Array.from(document.querySelectorAll('#books li .title'), title => title.textContent);"
LIVE_IDS = "return Array.from(document.querySelectorAll('#books li'), item => item.dataset.id);"
LIVE_STATS = "return ['stat-pid', 'stat-streams', 'stat-threads'].map(id => document.getElementById(id).textContent);"
# Every status each book's summary shows on the page, in order: recorded as the page changes, so none is missed.
WATCH_SUMMARIES = """
window.summaryHistory = {};
const note = (item) => {
  const summary = item && item.querySelector('.summary');
  if (!summary) { return; }
  const history = (window.summaryHistory[item.dataset.id] ||= []);
  if (history[history.length - 1] !== summary.dataset.status) { history.push(summary.dataset.status); }
};
new MutationObserver((records) => {
  for (const record of records) {
    if (record.type === 'childList') {
      record.addedNodes.forEach((node) => { if (node.nodeType === 1 && node.matches('li')) { note(node); } });
    } else if (record.target.matches('.summary')) {
      note(record.target.closest('li'));
    }
  }
}).observe(document.getElementById('books'),
           {childList: true, subtree: true, attributes: true, attributeFilter: ['data-status']});
"""
SUMMARY_HISTORY = "return window.summaryHistory[arguments[0]] || [];"
SUMMARY_TEXT = "return document.querySelector(`#books li[data-id='${arguments[0]}'] .summary`).textContent;"


def live_titles(driver: webdriver.Chrome) -> list[str]:
    return driver.execute_script(LIVE_TITLES)


def test_the_live_page_shows_books_added_elsewhere_as_they_come(
    stack: Stack, browser: webdriver.Chrome, second_browser: webdriver.Chrome
):
    """Browser 1 watches "/"; browser 2, logged in as staff, adds a book with the page's script and one without.
    Both reach browser 1 without a reload, once each, newest first, and it shows its worker's streams; the first
    book's summary, written by the task worker, goes from pending to done there."""
    viewer, staff = browser, second_browser
    password = stack.create_superuser("live-staff")
    by_script, by_form = (f"Live book {secrets.token_hex(4)}" for _ in range(2))

    # The viewer: anonymous, so no form but a way to log in; its stylesheet applies and its stream opens.
    viewer.get(stack.url("/"))
    assert not viewer.find_elements(By.ID, "add-book")
    assert viewer.find_elements(By.CSS_SELECTOR, 'a[href="/admin/login/?next=/"]')
    assert viewer.execute_script("return getComputedStyle(document.querySelector('main')).maxWidth;") != "none"
    WebDriverWait(viewer, WAIT).until(lambda d: d.execute_script(LIVE))
    WebDriverWait(viewer, WAIT).until(lambda d: d.find_element(By.ID, "live-stats").is_displayed())
    document_statuses(viewer)  # from here on, any page it loads would be a reload
    viewer.execute_script(WATCH_SUMMARIES)

    # The staff member logs in through the admin's form and is sent back to the page, which now has the add form.
    staff.get(stack.url("/admin/login/?next=/"))
    staff.find_element(By.NAME, "username").send_keys("live-staff")
    staff.find_element(By.NAME, "password").send_keys(password)
    submit(staff, staff.find_element(By.CSS_SELECTOR, "#login-form [type=submit]"))
    assert staff.current_url == stack.url("/"), staff.find_element(By.TAG_NAME, "body").text[:2000]
    WebDriverWait(staff, WAIT).until(lambda d: d.execute_script(LIVE))

    # With the page's script: sent with fetch, the field cleared, the page kept; the book comes back by the stream.
    field = staff.find_element(By.ID, "book-title")
    field.send_keys(by_script)
    document_statuses(staff)
    staff.find_element(By.CSS_SELECTOR, "#add-book [type=submit]").click()
    status = WebDriverWait(staff, WAIT).until(
        lambda d: (text := d.find_element(By.ID, "add-status").text) not in ("", "Adding…") and text
    )
    assert status.startswith("Added"), status
    assert field.get_property("value") == ""
    WebDriverWait(viewer, LIVE_WAIT).until(lambda d: by_script in live_titles(d))
    WebDriverWait(staff, LIVE_WAIT).until(lambda d: by_script in live_titles(d))
    assert live_titles(staff).count(by_script) == 1
    assert document_statuses(staff) == []  # no page was loaded

    # Without it: the browser's own POST, a 303 back to the page, which the server renders with the book.
    staff.find_element(By.ID, "book-title").send_keys(by_form)
    submit(staff, form=staff.find_element(By.ID, "add-book"))
    assert document_statuses(staff) == [("POST", stack.url("/books/"), 303), ("GET", stack.url("/"), 200)]
    assert live_titles(staff)[:2] == [by_form, by_script]
    assert f'<span class="title">{by_form}</span>' in stack.get("/").text()  # no script involved

    # The viewer got both, without a reload, once each, the newest first.
    WebDriverWait(viewer, LIVE_WAIT).until(lambda d: by_form in live_titles(d))
    titles = live_titles(viewer)
    assert titles.count(by_script) == 1 and titles.count(by_form) == 1, titles
    assert titles.index(by_form) < titles.index(by_script), titles
    ids = viewer.execute_script(LIVE_IDS)
    assert len(ids) == len(set(ids)), ids
    assert document_statuses(viewer) == []

    # The first book's summary, written by the task worker, reached the viewer without a reload: pending, then done.
    book_id = ids[titles.index(by_script)]
    WebDriverWait(viewer, WAIT).until(lambda d: d.execute_script(SUMMARY_HISTORY, book_id)[-1:] == ["done"])
    assert viewer.execute_script(SUMMARY_HISTORY, book_id) == ["pending", "done"]
    assert by_script in viewer.execute_script(SUMMARY_TEXT, book_id)
    assert document_statuses(viewer) == []

    # The worker serving its stream: its pid, at least this stream open, and its threads.
    pid, streams, threads = viewer.execute_script(LIVE_STATS)
    assert re.fullmatch(r"[0-9]+", pid), pid
    assert re.fullmatch(r"[0-9]+ open streams?", streams) and int(streams.split()[0]) >= 1, streams
    assert re.fullmatch(r"[0-9]+ OS threads?", threads) and int(threads.split()[0]) >= 1, threads

    # Nothing on either page was refused by the Content-Security-Policy: no inline style, handler or script.
    for driver in (viewer, staff):
        refused = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not refused, refused

    # The whole page in the picture: a narrower window, as tall as the page (plus the window's own frame).
    viewer.set_window_size(960, 900)
    height = viewer.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;"
    )
    viewer.set_window_size(960, height)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "live-page.png"
    assert viewer.save_screenshot(str(screenshot)), screenshot
    print(f"screenshot of the live page after {by_script!r} and {by_form!r} arrived: {screenshot}")
    if DOCS_SCREENSHOTS:
        shutil.copyfile(screenshot, ROOT / "docs" / "img" / "live-page.png")
