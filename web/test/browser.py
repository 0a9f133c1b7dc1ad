#!/usr/bin/env python3
"""The web page in a real headless browser (Debian's chromium and chromium-driver,
through WebDriver with Selenium) against a running system (`cargo xtask up`).

It signs up (first with a password the contract refuses, which must show the field's
violation), fails a login with a bad password (the status message must show), logs in,
sees the profile, waits for the live feed, then logs in again from another client (plain
HTTP/JSON, as a second device would) and waits for that sign-in's notification to appear
on the page without a reload. Last, it replaces the stored access token with a rejected
one and reloads: the page must refresh the token and show the profile again. No script
may have thrown an uncaught error on the way.

On failure it writes a screenshot, the page's HTML and the browser's console log next to
--artifacts. Exit status 0 when every step passed.

    python3 web/test/browser.py --page http://localhost:50050/ --auth http://localhost:50052
"""

import argparse
import json
import os
import sys
import traceback
import urllib.request
import uuid

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

PASSWORD = "correct horse battery"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", default="http://localhost:50050/", help="the page's URL")
    parser.add_argument("--auth", default="http://localhost:50052", help="the auth service (HTTP/JSON)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--chromedriver", default=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    parser.add_argument("--artifacts", default="browser-test", help="where failure artefacts go (a file prefix)")
    parser.add_argument("--screenshot", help="also save a screenshot of the signed-in page here")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each step")
    return parser.parse_args()


def start_browser(args):
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1300"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=options)


def step(name):
    print(f"browser: {name}", flush=True)


def main():
    args = parse_args()
    driver = start_browser(args)
    wait = WebDriverWait(driver, args.timeout)
    visible = lambda element_id: wait.until(ec.visibility_of_element_located((By.ID, element_id)))

    def fill(form, values):
        for element_id, value in values.items():
            field = driver.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.CSS_SELECTOR, f"#{form} button[type=submit]").click()

    def error_text():
        visible("error")
        return driver.find_element(By.ID, "error").text

    def count_titled(title):
        items = driver.find_elements(By.CSS_SELECTOR, "#notifications li strong")
        return sum(1 for item in items if item.text == title)

    email = f"browser-{uuid.uuid4().hex[:12]}@example.com"
    try:
        step(f"open {args.page}")
        driver.get(args.page)
        visible("signup-form")

        step("sign up with a password the contract refuses: the field's violation shows")
        fill("signup-form", {"signup-email": email, "signup-name": "Ada Browser", "signup-password": "short"})
        wait.until(lambda d: "password" in error_text())

        step("sign up")
        fill("signup-form", {"signup-email": email, "signup-name": "Ada Browser", "signup-password": PASSWORD})
        wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), "Account created"))
        assert driver.find_element(By.ID, "error").is_displayed() is False, "the old error is cleared"

        step("log in with a bad password: the status message shows")
        fill("login-form", {"login-email": email, "login-password": "not the password at all"})
        wait.until(lambda d: error_text().strip() != "")
        assert driver.find_element(By.ID, "signed-in").is_displayed() is False

        step("log in: the profile shows")
        fill("login-form", {"login-email": email, "login-password": PASSWORD})
        visible("signed-in")
        wait.until(ec.text_to_be_present_in_element((By.ID, "profile-email"), email))
        assert driver.find_element(By.ID, "profile-name").text == "Ada Browser"

        step("the live feed connects; the welcome and this sign-in are listed")
        wait.until(lambda d: d.find_element(By.ID, "live-status").get_attribute("data-state") == "live")
        wait.until(lambda d: count_titled("New sign-in") >= 1)
        before = count_titled("New sign-in")

        step("another client logs in: its notification appears without a reload")
        request = urllib.request.Request(
            f"{args.auth}/v1/tokens:login",
            data=json.dumps({"email": email, "password": PASSWORD}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=args.timeout) as reply:
            assert reply.status == 200, reply.status
        wait.until(lambda d: count_titled("New sign-in") == before + 1)
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
            print(f"browser: screenshot in {args.screenshot}")

        step("a rejected access token is refreshed: the profile shows after a reload")
        driver.execute_script(
            "const s = JSON.parse(sessionStorage.getItem('trellis.session'));"
            "s.accessToken = 'expired.' + s.accessToken.slice(8);"
            "sessionStorage.setItem('trellis.session', JSON.stringify(s));"
        )
        driver.refresh()
        wait.until(ec.text_to_be_present_in_element((By.ID, "profile-email"), email))
        wait.until(lambda d: d.find_element(By.ID, "live-status").get_attribute("data-state") == "live")
        assert not driver.find_element(By.ID, "error").is_displayed(), error_text()

        step("no script error on the way")
        uncaught = [entry["message"] for entry in driver.get_log("browser") if "Uncaught" in entry["message"]]
        assert not uncaught, uncaught
        print("browser: every step passed")
        return 0
    except Exception:  # noqa: BLE001 - every failure gets its artefacts
        traceback.print_exc()
        driver.save_screenshot(f"{args.artifacts}.png")
        with open(f"{args.artifacts}.html", "w", encoding="utf-8") as page:
            page.write(driver.page_source)
        with open(f"{args.artifacts}-console.json", "w", encoding="utf-8") as console:
            json.dump(driver.get_log("browser"), console, indent=2)
        print(f"browser: FAILED; screenshot, HTML and console log at {args.artifacts}.*", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
