"""Drive posthaste's web pages in a real, headless Chromium (selenium + chromedriver).

Usage: web_browser.py BASE HOSTNAME IP SHOTS ADMIN ADMIN_PASSWORD BANNED_IP

BASE is https://HOSTNAME:PORT; the browser reaches HOSTNAME at IP through
--host-resolver-rules. Every page visited is saved as SHOTS/NAME.png. Prints one line per
step ("ok STEP") and exits non-zero on the first failure, with the page source.
"""
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, hostname, ip, shots, admin, admin_pw, banned = sys.argv[1:8]
os.makedirs(shots, exist_ok=True)
profile = tempfile.mkdtemp(prefix="posthaste-chromium-")

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--user-data-dir=" + profile, "--host-resolver-rules=MAP %s %s" % (hostname, ip),
    # The test certificate is self-signed.
    "--ignore-certificate-errors", "--window-size=1280,900", "--lang=en-US",
]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_page_load_timeout(30)


def shot(name):
    d.save_screenshot(os.path.join(shots, name + ".png"))


def fail(step):
    print("FAILED " + step + " at " + d.current_url)
    print(d.page_source[:4000])
    d.quit()
    sys.exit(1)


def expect(step, cond):
    if not cond:
        fail(step)
    print("ok " + step)


def present(id_):
    """The element once the page that has it has loaded (a click starts a navigation that
    may still be under way), or None after 20 s."""
    try:
        return WebDriverWait(d, 20).until(EC.presence_of_element_located((By.ID, id_)))
    except Exception:
        return None


def text_of(id_):
    e = present(id_)
    return e.text if e is not None else ""


def at(suffix):
    try:
        WebDriverWait(d, 20).until(lambda drv: drv.current_url.endswith(suffix))
        return True
    except Exception:
        return False


def fill(id_, value):
    e = present(id_) or d.find_element(By.ID, id_)
    e.clear()
    e.send_keys(value)


def login(user, password):
    d.get(base + "/admin/login")
    fill("username", user)
    fill("password", password)
    d.find_element(By.ID, "login").click()


try:
    d.get(base + "/admin/login")
    shot("login")
    login(admin, admin_pw)
    expect("admin login", at("/admin/") and present("queue-size") is not None)
    shot("dashboard")

    d.get(base + "/admin/domains")
    fill("domain-name", "shop.test")
    d.find_element(By.ID, "add-domain-button").click()
    expect("domain added", "shop.test" in text_of("message"))
    d.get(base + "/admin/domains")
    expect("domain listed", "shop.test" in d.find_element(By.ID, "domains").text)
    shot("domains")
    d.get(base + "/admin/domains/shop.test")
    expect("dns records", "_domainkey" in d.page_source)
    shot("domain-dns")

    d.get(base + "/admin/accounts")
    fill("account-address", "bob@shop.test")
    fill("account-password", "bob's first passphrase")
    fill("account-quota", "1G")
    d.find_element(By.ID, "add-account-button").click()
    expect("account added", "bob@shop.test" in text_of("message"))
    d.get(base + "/admin/accounts?domain=shop.test")
    expect("account listed", "bob@shop.test" in d.find_element(By.ID, "accounts").text)
    shot("accounts")
    d.get(base + "/admin/accounts/bob%40shop.test")
    shot("account")
    for page in ["aliases", "queue", "audit"]:
        d.get(base + "/admin/" + page)
        shot(page)
    expect("audit shows the changes", "user.add" in d.page_source and "domain.add" in d.page_source)

    d.get(base + "/admin/bans")
    expect("ban listed", banned in d.find_element(By.ID, "bans").text)
    shot("bans")
    d.find_element(By.ID, "unban-" + banned.replace(".", "-").replace(":", "-")).click()
    expect("unbanned", banned in text_of("message"))
    d.get(base + "/admin/bans")
    expect("ban gone", present("no-bans") is not None)

    # Russian, switched by the link in the footer.
    d.get(base + "/admin/?lang=ru")
    expect("russian", "Обзор" in d.page_source)
    shot("dashboard-ru")
    d.get(base + "/admin/?lang=en")

    # A phone.
    d.set_window_size(390, 844)
    d.get(base + "/admin/")
    shot("dashboard-phone")
    d.set_window_size(1280, 900)

    d.find_element(By.CSS_SELECTOR, "form.logout button").click()
    present("username")
    login("bob@shop.test", "bob's first passphrase")
    expect("user lands in self-service", at("/account/") and present("change-password") is not None)
    fill("current", "bob's first passphrase")
    fill("new", "bob's second passphrase")
    fill("confirm", "bob's second passphrase")
    d.find_element(By.ID, "change-password-button").click()
    expect("password changed", present("message") is not None)
    fill("app-name", "phone")
    d.find_element(By.ID, "add-app-button").click()
    expect("app password shown", len(text_of("app-password")) == 19)
    shot("self-service")
    d.get(base + "/account/setup")
    expect("setup page", "mobileconfig" in d.page_source)
    shot("setup")
    d.find_element(By.CSS_SELECTOR, "form.logout button").click()
    present("username")
    login("bob@shop.test", "bob's second passphrase")
    expect("new password works", at("/account/") and present("change-password") is not None)
finally:
    d.quit()
