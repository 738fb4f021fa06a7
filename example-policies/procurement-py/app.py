"""The procurement agent's policy in Python: the same defaults, rules, risks
and reasons as the Rust build in ../procurement, built into a component by
componentize-py (see policy-sdk/README.md)."""

import functools
import json
import re
from decimal import Decimal

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Action, Context, Decision, Outcome, Principal

DEFAULTS = {
    "tools": ["db.query", "send_email", "payments.transfer", "workflow.trigger"],
    "tables": ["orders", "suppliers", "invoices", "purchase_orders"],
    "email_domains": ["corp.example"],
    "approval_over": 5000.0,
    "deny_over": 50000.0,
}

# What each setting must be; a key not listed here is refused.
SETTING_TYPES = {
    "tools": "strings",
    "tables": "strings",
    "email_domains": "strings",
    "approval_over": "number",
    "deny_over": "number",
}


class SettingsError(Exception):
    """Settings that do not parse; the message names the key."""


def is_number(v) -> bool:
    # bool is an int in Python, but `true` is not a number in JSON.
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@functools.lru_cache(maxsize=1)
def parse_settings(text: str) -> dict:
    """Settings over the defaults; raises SettingsError naming the key.

    Cached: an instance kept for reuse (limits.reuse) is given the same
    settings every time, so it parses them once. The result is read only."""
    text = text.strip()
    try:
        doc = {} if text in ("", "null") else json.loads(text)
    except ValueError as e:
        raise SettingsError(f"settings: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SettingsError("settings: expected an object")
    settings = dict(DEFAULTS)
    for key, value in doc.items():
        kind = SETTING_TYPES.get(key)
        if kind is None:
            expected = ", ".join(f"`{k}`" for k in SETTING_TYPES)
            raise SettingsError(f"settings key `{key}`: unknown field, expected one of {expected}")
        if kind == "number":
            if not is_number(value):
                raise SettingsError(f"settings key `{key}`: expected a number")
            value = float(value)
        if kind == "strings":
            if not isinstance(value, list):
                raise SettingsError(f"settings key `{key}`: expected a list of strings")
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise SettingsError(f"settings key `{key}[{i}]`: expected a string")
        settings[key] = value
    return settings


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(s: str) -> str:
    """ASCII-only case folding, as the Rust build compares."""
    return s.translate(_ASCII_LOWER)


def contains_ignore_case(items: list, item: str) -> bool:
    item = ascii_lower(item)
    return any(ascii_lower(x) == item for x in items)


# Unicode White_Space, which is what Rust's `char::is_whitespace` tests.
_WHITE_SPACE = re.compile("[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000,;]")


def domain_of(address: str):
    """The lower-cased domain of a well-formed address, or None."""
    if _WHITE_SPACE.search(address):
        return None
    local, at, domain = address.partition("@")
    if not at or not local or "@" in domain:
        return None
    return ascii_lower(domain)


def in_domains(address: str, domains: list) -> bool:
    domain = domain_of(address)
    return domain is not None and any(ascii_lower(d) == domain for d in domains)


def recipients(params: dict, keys: list) -> list:
    """Each recipient of `keys`: a string, or None for a value that is not one."""
    out = []
    for key in keys:
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            if value:
                out.append(value)
        elif isinstance(value, list):
            for v in value:
                if not isinstance(v, str):
                    out.append(None)
                elif v:
                    out.append(v)
        else:
            out.append(None)
    return out


def amount_of(v):
    """A number above zero, as a float, or None."""
    if not is_number(v):
        return None
    v = float(v)
    return v if v > 0 and v != float("inf") else None


def dollars(x: float) -> str:
    """Dollars as Rust prints an f64: the shortest digits, never an exponent."""
    s = format(Decimal(repr(float(x))), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def decision(outcome: Outcome, rule: str, reason: str, risk: int) -> Decision:
    # `labels`: arbiter:policy@0.2.0; procurement attaches none.
    return Decision(outcome=outcome, reason=reason, rule=rule, risk=risk, params=None, labels=[])


def allow() -> Decision:
    return decision(Outcome.ALLOW, "default.allow", "No procurement rule forbids this action.", 0)


def query(s: dict, action: Action) -> Decision:
    target = action.target
    table = target[7:] if ascii_lower(target[:7]) == "public." else target
    if not contains_ignore_case(s["tables"], table):
        return decision(
            Outcome.DENY, "db.table-not-allowed", f"Table `{table}` is not one this agent may query.", 70
        )
    return allow()


def email(s: dict, params: dict) -> Decision:
    if not recipients(params, ["to"]):
        return decision(Outcome.DENY, "email.no-recipient", "The e-mail has no recipient.", 40)
    domains = s["email_domains"]
    if not all(a is not None and in_domains(a, domains) for a in recipients(params, ["to", "cc"])):
        return decision(
            Outcome.DENY,
            "email.external-recipient",
            f"A recipient is not a well-formed address in the allowed domains ({', '.join(domains)}).",
            80,
        )
    return allow()


def transfer(s: dict, params: dict) -> Decision:
    amount = amount_of(params.get("amount"))
    if amount is None:
        return decision(
            Outcome.DENY,
            "spend.invalid-amount",
            "The transfer amount is missing, not a number, or not above zero.",
            50,
        )
    if amount > s["deny_over"]:
        return decision(
            Outcome.DENY,
            "spend.over-limit",
            f"The transfer of ${dollars(amount)} is over the hard limit of ${dollars(s['deny_over'])}.",
            90,
        )
    if amount > s["approval_over"]:
        return decision(
            Outcome.REQUIRE_APPROVAL,
            "spend.needs-approval",
            f"The transfer of ${dollars(amount)} is over ${dollars(s['approval_over'])} and needs approval.",
            60,
        )
    return allow()


def params_of(text: str) -> dict:
    """`params` that are not a JSON object count as `{}`."""
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def has_role(principal: Principal | None, role: str) -> bool:
    return principal is not None and role in principal.roles


class WitWorld(wit_world.WitWorld):
    def validate_settings(self, settings: str) -> None:
        try:
            parse_settings(settings)
        except SettingsError as e:
            raise Err(str(e)) from None

    def evaluate(self, action: Action, context: Context) -> Decision:
        s = parse_settings(context.settings)
        name = action.name
        if name not in s["tools"]:
            return decision(
                Outcome.DENY, "tool.not-allowed", f"Tool `{name}` is not one this agent may use.", 70
            )
        if context.environment == "prod" and (
            has_role(context.agent, "intern") or has_role(context.user, "intern")
        ):
            return decision(
                Outcome.DENY,
                "env.prod-intern",
                "Interns may not act in production, directly or through an agent.",
                80,
            )
        params = params_of(action.params)
        if name == "db.query":
            return query(s, action)
        if name == "send_email":
            return email(s, params)
        if name == "payments.transfer":
            return transfer(s, params)
        return allow()
