"""The web page (/ui/) and the API documentation (/docs) in a real browser: Debian's headless
chromium driven through chromium-driver, against a real API (gunicorn's gevent worker) and the
suite's worker, with real imports and builds.

One browser serves the module. A screenshot of each view is kept under .test-logs/ for people
to look at. Without chromium the tests fail, never skip (deploy/local-services.sh installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.api_calls import Http, make_tenant, registry_origin
from tests.image_builds import dockerfile_context
from tests.processes import api_server
from tests.services import BASE_IMAGE, ROOT, TEST_ENVIRONMENT

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / ".test-logs"


@pytest.fixture(scope="module")
def base(worker) -> Iterator[str]:
    with api_server("ui-api", env={**os.environ, **TEST_ENVIRONMENT}) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: install Debian's chromium and "
                    "chromium-driver (deploy/local-services.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-default-apps", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    SCREENSHOTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def ours(base) -> Http:
    return Http(base, make_tenant())


@dataclass
class Theirs:
    """Another hub's source, image and import job: none of them may ever reach our page."""

    http: Http
    shown: dict[str, str]  # what of theirs the page could show: names and ids


@pytest.fixture(scope="module")
def theirs(base, pushed_image) -> Theirs:
    http = Http(base, make_tenant())
    marker = f"theirs-{uuid.uuid4().hex[:8]}"
    source = http.source(registry_origin(pushed_image.public), name=f"{marker}-source")
    image = http.created("post", "/v1/images", {"source_id": source, "name": f"{marker}-image"})
    job = http.job_of("post", f"/v1/images/{image['id']}/tasks", {"action": "import"})
    return Theirs(http, {"marker": marker, "hub": http.tenant.hub_id, "source": source,
                         "image": image["id"], "job": job})


# --- Driving the page -------------------------------------------------------------------------


def wait_until(condition, what: str, timeout: float = 60, every: float = 0.1):
    """`condition()` once it is truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except WebDriverException:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(every)


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The browser log's errors since the last call (a CSP violation is one)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the browser asked for since the last call, from its performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def page_text(driver: webdriver.Chrome) -> str:
    """All the page's text, that of hidden views too."""
    return driver.execute_script("return document.documentElement.textContent")


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    driver.save_screenshot(str(SCREENSHOTS / f"ui-{name}.png"))


def show(driver: webdriver.Chrome, view: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'button[data-view="{view}"]').click()
    wait_until(lambda: driver.find_element(By.ID, f"view-{view}").is_displayed(), f"{view} view")


def connect(driver: webdriver.Chrome, base: str, http: Http) -> None:
    """The page, connected to the tenant's hub through its form."""
    driver.get(f"{base}/ui/")
    if driver.execute_script("return sessionStorage.getItem('imagejobs.key')"):
        # Still in this tab's session: the page connects by itself.
        wait_until(lambda: driver.find_element(By.ID, "hub").is_displayed(), "the hub's views")
        return
    driver.find_element(By.ID, "api-key").send_keys(http.tenant.secret)
    driver.find_element(By.ID, "hub-id").send_keys(http.tenant.hub_id)
    driver.find_element(By.CSS_SELECTOR, "#connect-form button[type=submit]").click()
    wait_until(lambda: driver.find_element(By.ID, "hub").is_displayed(), "the hub's views")
    wait_until(lambda: "Live" in driver.find_element(By.ID, "connection").text,
               "the hub's events to be followed")


def choose_source(driver: webdriver.Chrome, source_id: str) -> None:
    """Pick the source in the import form, once the page heard of it (from the hub's events)."""
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR,
                                            f'#import-source option[value="{source_id}"]'),
               "the new source among the import form's choices")
    Select(driver.find_element(By.ID, "import-source")).select_by_value(source_id)


def job_element_state(driver: webdriver.Chrome, job_id: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'[data-job-id="{job_id}"] .job-state')
    return found[0].text if found else None


def new_job_id(driver: webdriver.Chrome) -> str:
    status = wait_until(lambda: re.search(r"job ([0-9a-f]{24})",
                                          driver.find_element(By.ID, "import-status").text),
                        "the import's job to be named")
    return status[1]


# Records, from inside the page, every state a job's element shows, however briefly.
RECORD_JOB_STATES = """
window.seenStates = {};
new MutationObserver(() => {
  for (const node of document.querySelectorAll('[data-job-id]')) {
    const state = node.querySelector('.job-state').textContent;
    const seen = window.seenStates[node.dataset.jobId] = window.seenStates[node.dataset.jobId] || [];
    if (seen[seen.length - 1] !== state) seen.push(state);
  }
}).observe(document.getElementById('jobs-list'), {subtree: true, childList: true,
                                                   characterData: true});
window.notReloaded = true;
"""


# --- Tests ------------------------------------------------------------------------------------


def test_the_page_loads_with_no_console_error_and_a_strict_content_security_policy(
        browser, base):
    browser.get(f"{base}/ui/")
    wait_until(lambda: browser.find_element(By.ID, "connect-form").is_displayed(), "the form")
    screenshot(browser, "sign-in")
    assert console_errors(browser) == []
    assert browser.find_element(By.CSS_SELECTOR, "label[for=api-key]").text == "API key"
    assert browser.find_element(By.ID, "api-key").get_attribute("type") == "password"
    browser.find_element(By.ID, "api-key").send_keys("not-a-key")
    browser.find_element(By.ID, "hub-id").send_keys("0" * 24)
    browser.find_element(By.CSS_SELECTOR, "#connect-form button[type=submit]").click()
    wait_until(lambda: "Could not connect" in browser.find_element(By.ID, "connect-error").text,
               "the refusal on screen")
    assert browser.execute_script("return sessionStorage.length") == 0
    # The refused call is logged by the browser as a failed load; nothing else may be.
    assert [e for e in console_errors(browser) if "401" not in e["message"]] == []

    for path in ("/ui/", "/ui/app.js", "/docs", "/docs/swagger-ui-bundle.js"):
        response = requests.get(base + path, timeout=10)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, policy
        assert "connect-src 'self'" in policy and "unsafe" not in policy, policy
    assert requests.get(f"{base}/ui/../app/__init__.py", timeout=10).status_code == 404


def test_an_import_started_from_the_page_goes_from_queued_to_completed_without_a_reload(
        browser, base, ours, theirs, pushed_image):
    source = ours.source(registry_origin(pushed_image.public), name="ui-registry")
    connect(browser, base, ours)
    browser.execute_script(RECORD_JOB_STATES)
    choose_source(browser, source)
    # From the keyboard: Enter in the form submits it.
    browser.find_element(By.ID, "import-name").send_keys("ui-imported" + Keys.ENTER)
    job_id = new_job_id(browser)

    show(browser, "jobs")
    wait_until(lambda: job_element_state(browser, job_id) == "completed",
               "the job to show completed", timeout=90)
    seen = browser.execute_script("return window.seenStates[arguments[0]]", job_id)
    assert seen[0] == "queued" and seen[-1] == "completed", seen
    assert browser.execute_script("return window.notReloaded") is True
    steps = browser.find_elements(By.CSS_SELECTOR, f'[data-job-id="{job_id}"] .steps li')
    assert [s.get_attribute("data-step-state") for s in steps] == ["done"] * len(steps) != []
    screenshot(browser, "jobs")

    show(browser, "images")
    row = wait_until(lambda: browser.find_element(
        By.XPATH, "//tr[td[1][text()='ui-imported']]//span[contains(@class, 'state-live')]"),
        "the image to show live")
    assert row.text == "live"
    screenshot(browser, "images")
    assert console_errors(browser) == []
    # Theirs went on beside ours all along.
    assert theirs.http.wait_for_job(theirs.shown["job"])["state"]["current"] == "completed"


def test_build_log_lines_appear_while_the_build_runs(browser, base, ours, files):
    url = files.add("/ui-build.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo ui-line-one && sleep 2\nRUN echo ui-line-two && sleep 2\n"
        "RUN echo ui-line-three && sleep 2\nRUN echo ui-line-four\n"))
    source = ours.source({"type": "docker-file", "details": {"targz_url": url}}, name="ui-build")
    connect(browser, base, ours)
    show(browser, "images")
    choose_source(browser, source)
    browser.find_element(By.CSS_SELECTOR, "#import-form button[type=submit]").click()
    job_id = new_job_id(browser)

    # The page opens the log of a build it started, and shows its lines as they are written.
    log = browser.find_element(By.ID, "build-log")
    wait_until(lambda: "ui-line-one" in log.text.splitlines(), "the first line on screen")
    job = ours.call("get", f"/v1/jobs/{job_id}").json()["data"]
    assert job["state"]["current"] == "running", job["state"]
    assert "ui-line-three" not in log.text.splitlines()
    screenshot(browser, "build-log")

    # The job's planned steps, the one being worked on with how far it is.
    show(browser, "jobs")
    progress = wait_until(lambda: browser.find_element(
        By.CSS_SELECTOR, f'[data-job-id="{job_id}"] [data-step-state="running"] progress'),
        "the build step's progress", timeout=20)
    assert "Build" in progress.get_attribute("aria-label"), progress.get_attribute("aria-label")
    states = [s.get_attribute("data-step-state") for s in browser.find_elements(
        By.CSS_SELECTOR, f'[data-job-id="{job_id}"] .steps li')]
    assert states[0] == "done" and states[-1] == "planned", states
    screenshot(browser, "job-steps")
    show(browser, "images")

    wait_until(lambda: "The build ended" in browser.find_element(By.ID, "build-log-state").text,
               "the end of the build", timeout=90)
    lines = log.text.splitlines()
    assert lines.index("ui-line-one") < lines.index("ui-line-two") < lines.index("ui-line-four")
    image = ours.call("get", f"/v1/jobs/{job_id}").json()["data"]["tasks"][0]["input"]
    wait_until(lambda: browser.find_element(
        By.CSS_SELECTOR, f'tr[data-image-id="{image["image_id"]}"] .state').text == "live",
        "the built image to show live", timeout=60)
    assert console_errors(browser) == []


def test_a_dry_run_prune_and_a_delete_from_the_page(browser, base, ours, pushed_image):
    source = ours.source(registry_origin(pushed_image.public), name="ui-pruned")
    image = ours.image(source)
    imported = ours.job_of("post", f"/v1/images/{image}/tasks", {"action": "import"})
    assert ours.wait_for_job(imported)["state"]["current"] == "completed"
    connect(browser, base, ours)

    show(browser, "sources")
    box = wait_until(lambda: browser.find_element(By.ID, f"prune-{source}"),
                     "the source's box")
    box.click()
    browser.find_element(By.CSS_SELECTOR, "#prune-form button[type=submit]").click()
    wait_until(lambda: "Dry run completed" in browser.find_element(By.ID, "prune-state").text,
               "the dry run's result", timeout=60)
    output = browser.find_element(By.ID, "prune-output").text
    assert image in output and "would be removed" in output, output
    assert "1 image(s) would be removed" in browser.find_element(By.ID, "prune-state").text
    screenshot(browser, "sources")
    # A dry run removes nothing.
    assert ours.call("get", f"/v1/images/{image}").json()["data"]["state"]["current"] == "live"

    show(browser, "images")
    delete = wait_until(lambda: browser.find_element(
        By.CSS_SELECTOR, f'tr[data-image-id="{image}"] button[data-action="delete"]'),
        "the image's delete button")
    delete.click()
    alert = wait_until(lambda: _alert(browser), "the confirmation")
    alert.accept()
    wait_until(lambda: browser.find_element(
        By.CSS_SELECTOR, f'tr[data-image-id="{image}"] .state').text == "deleted",
        "the image to show deleted", timeout=60)
    assert ours.call("get", f"/v1/images/{image}").json()["data"]["state"]["current"] == \
        "deleted"
    assert console_errors(browser) == []


def _alert(driver: webdriver.Chrome):
    try:
        alert = driver.switch_to.alert
        alert.text  # noqa: B018  (raises while there is none)
        return alert
    except NoAlertPresentException:
        return None


def test_another_hubs_resources_never_appear(browser, base, ours, theirs):
    connect(browser, base, ours)
    for view in ("images", "sources", "jobs"):
        show(browser, view)
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-job-id]"), "our jobs")
    text = page_text(browser)
    for value in theirs.shown.values():
        assert value not in text, value


def test_docs_render_the_api_operations_with_no_request_to_another_host(browser, base):
    requested_urls(browser)  # what came before
    browser.get(f"{base}/docs")
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 10,
               "the operations", timeout=30)
    text = browser.find_element(By.ID, "swagger-ui").text
    assert "/v1/images/{image_id}/build-log" in text and "/v1/jobs/{job_id}" in text
    screenshot(browser, "docs")
    urls = requested_urls(browser)
    assert any(u.endswith("/v1/openapi.json") for u in urls), urls
    api_host = urlsplit(base).netloc
    elsewhere = [u for u in urls if urlsplit(u).scheme != "data" and urlsplit(u).netloc != api_host]
    assert elsewhere == [], elsewhere
    assert console_errors(browser) == []
