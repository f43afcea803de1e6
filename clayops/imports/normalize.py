"""Normalising what a CSV row says: emails, company domains, column names; the de-duplication key.

The rules are in the package docstring (clayops.imports).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import idna  # IDNA 2008 with UTS 46 mapping (a declared dependency)

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "e mail", "work email", "email address", "e mail address"),
    "domain": ("domain", "website", "company domain", "url", "company website", "website url"),
    "company": ("company", "company name", "organization", "organisation", "account", "account name"),
    "first_name": ("first name", "firstname", "first", "given name"),
    "last_name": ("last name", "lastname", "surname", "family name"),
}
ALIAS_TO_FIELD = {alias: field for field, aliases in COLUMN_ALIASES.items() for alias in aliases}

# Not anyone's company domain: free mail (from an email) and social sites (in a "url" column).
_FREE_MAIL = """
    gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr yahoo.de ymail.com hotmail.com
    hotmail.co.uk hotmail.fr outlook.com live.com live.co.uk msn.com aol.com icloud.com me.com
    mac.com protonmail.com proton.me pm.me gmx.com gmx.de gmx.net web.de mail.com yandex.ru
    yandex.com mail.ru qq.com 163.com 126.com zoho.com fastmail.com hey.com tutanota.com
    orange.fr free.fr laposte.net btinternet.com comcast.net t-online.de libero.it
"""
_SOCIAL = "linkedin.com facebook.com twitter.com x.com instagram.com"
NOT_COMPANY_DOMAINS = frozenset(_FREE_MAIL.split() + _SOCIAL.split())

_DOMAIN_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})")
_EMAIL_LOCAL_RE = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")
_SEP_HINT_RE = re.compile(r"sep=(.)\s*$")


def _ascii_host(host: str) -> str:
    """A valid lower-case ASCII (punycode) host name, or ""."""
    host = host.strip().strip(".").lower()
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
            return ""
    if len(host) > 253 or not _DOMAIN_RE.fullmatch(host):
        return ""
    return host


def normalize_domain(value: str) -> str:
    """`https://www.Acme.com:443/about?x` → `acme.com`; "" when no valid host name is left."""
    value = value.strip().lower()
    if not value:
        return ""
    value = _SCHEME_RE.sub("", value, count=1)
    value = value.removeprefix("//")
    for stop in "/?#":
        value = value.split(stop, 1)[0]
    value = value.rsplit("@", 1)[-1]  # user info, or an email typed into the website column
    value = value.split(":", 1)[0]
    host = _ascii_host(value)
    if host.startswith("www.") and host.count(".") > 1:
        host = host[4:]
    return host


def split_email(value: str) -> tuple[str, str]:
    """(normalised email, its ASCII domain), or ("", "") when it does not look like an email."""
    email = value.strip().lower()
    if email.endswith(">") and "<" in email:  # Jane Doe <jane@acme.com>
        email = email[email.rindex("<") + 1 : -1].strip()
    email = email.removeprefix("mailto:")
    local, at, domain = email.rpartition("@")
    if not at or len(email) > 254 or not _EMAIL_LOCAL_RE.fullmatch(local):
        return "", ""
    host = _ascii_host(domain)
    if not host:
        return "", ""
    return email, host


def lead_fingerprint(
    *, email: str, domain: str, first_name: str = "", last_name: str = "", company: str = ""
) -> str:
    """The de-duplication key (see the module docstring). Takes normalised email and domain."""
    if email:
        key = email
    else:
        names = "|".join(value.strip().lower() for value in (first_name, last_name, company))
        key = f"domain:{domain}|{names}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def header_key(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").replace("_", " ").replace("-", " ").lower().split())


def first_value(fields: list[str], cols: Iterable[int]) -> str:
    for i in cols:
        value = fields[i].strip()
        if value:
            return value
    return ""


def quoted(value: str, limit: int = 80) -> str:
    return f"“{value[:limit]}…”" if len(value) > limit else f"“{value}”"


# Spreadsheet formula injection (OWASP "CSV Injection"): a cell starting with one of these is run as
# a formula by Excel, LibreOffice or Google Sheets when a CSV is opened there.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def is_formula_like(value: str) -> bool:
    """True for a cell a spreadsheet would take as a formula. A plain number ("-5", "+1.5") is not."""
    if not value or not value.startswith(FORMULA_STARTS):
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def neutralise(value: str) -> str:
    """A cell made safe for a CSV export, as OWASP advises: a formula-like cell gets a leading ' so a
    spreadsheet shows it as text (csv.writer then quotes and escapes it as needed)."""
    return "'" + value if is_formula_like(value) else value
