// The procurement agent's policy in JavaScript: the same defaults, rules,
// risks and reasons as the Rust build in ../procurement, built into a
// component by componentize-js (see policy-sdk/README.md).

const DEFAULTS = {
  tools: ["db.query", "send_email", "payments.transfer", "workflow.trigger"],
  tables: ["orders", "suppliers", "invoices", "purchase_orders"],
  email_domains: ["corp.example"],
  approval_over: 5000,
  deny_over: 50000,
};

// What each setting must be; a key not listed here is refused.
const SETTING_TYPES = {
  tools: "strings",
  tables: "strings",
  email_domains: "strings",
  approval_over: "number",
  deny_over: "number",
};

class SettingsError extends Error {}

// Settings over the defaults. Throws a SettingsError naming the key at fault.
function parseSettings(json) {
  const text = json.trim();
  const doc = text === "" || text === "null" ? {} : parseJson(text);
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new SettingsError("settings: expected an object");
  }
  const settings = { ...DEFAULTS };
  for (const [key, value] of Object.entries(doc)) {
    const type = SETTING_TYPES[key];
    if (type === undefined) {
      throw new SettingsError(
        `settings key \`${key}\`: unknown field, expected one of ${Object.keys(SETTING_TYPES).map((k) => `\`${k}\``).join(", ")}`,
      );
    }
    if (type === "number" && typeof value !== "number") {
      throw new SettingsError(`settings key \`${key}\`: expected a number`);
    }
    if (type === "strings") {
      if (!Array.isArray(value)) {
        throw new SettingsError(`settings key \`${key}\`: expected a list of strings`);
      }
      value.forEach((item, i) => {
        if (typeof item !== "string") {
          throw new SettingsError(`settings key \`${key}[${i}]\`: expected a string`);
        }
      });
    }
    settings[key] = value;
  }
  return settings;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SettingsError(`settings: not JSON: ${e.message}`);
  }
}

// ASCII-only case folding, as the Rust build compares.
const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
const containsIgnoreCase = (list, item) => list.some((x) => asciiLower(x) === asciiLower(item));

// Unicode White_Space, which is what Rust's `char::is_whitespace` tests.
const WHITE_SPACE = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;

// The lower-cased domain of a well-formed address, or null.
function domainOf(address) {
  if (WHITE_SPACE.test(address) || address.includes(",") || address.includes(";")) return null;
  const at = address.indexOf("@");
  if (at <= 0 || address.indexOf("@", at + 1) !== -1) return null;
  return asciiLower(address.slice(at + 1));
}

const inDomains = (address, domains) => {
  const domain = domainOf(address);
  return domain !== null && domains.some((d) => asciiLower(d) === domain);
};

// Each recipient of `keys`: a string, or null for a value that is not one.
function recipients(params, keys) {
  const out = [];
  for (const key of keys) {
    const value = params[key];
    if (value === undefined || value === null) continue;
    if (typeof value === "string") {
      if (value !== "") out.push(value);
    } else if (Array.isArray(value)) {
      for (const v of value) {
        if (typeof v !== "string") out.push(null);
        else if (v !== "") out.push(v);
      }
    } else {
      out.push(null);
    }
  }
  return out;
}

// A number above zero, or null.
const amountOf = (v) => (typeof v === "number" && Number.isFinite(v) && v > 0 ? v : null);

// Dollars as Rust prints an f64: the shortest digits, never an exponent.
function dollars(x) {
  const s = String(x);
  if (!s.includes("e")) return s;
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(s);
  if (!m) return s;
  const [, sign, lead, frac = "", exp] = m;
  const digits = lead + frac;
  const point = 1 + Number(exp);
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

// `labels`: arbiter:policy@0.2.0; procurement attaches none.
const decision = (outcome, rule, reason, risk) => ({ outcome, rule, reason, risk, params: undefined, labels: [] });
const allow = () => decision("allow", "default.allow", "No procurement rule forbids this action.", 0);

function query(s, action) {
  const target = action.target;
  const table = asciiLower(target.slice(0, 7)) === "public." ? target.slice(7) : target;
  if (!containsIgnoreCase(s.tables, table)) {
    return decision("deny", "db.table-not-allowed", `Table \`${table}\` is not one this agent may query.`, 70);
  }
  return allow();
}

function email(s, params) {
  if (recipients(params, ["to"]).length === 0) {
    return decision("deny", "email.no-recipient", "The e-mail has no recipient.", 40);
  }
  const all = recipients(params, ["to", "cc"]);
  if (!all.every((a) => a !== null && inDomains(a, s.email_domains))) {
    return decision(
      "deny",
      "email.external-recipient",
      `A recipient is not a well-formed address in the allowed domains (${s.email_domains.join(", ")}).`,
      80,
    );
  }
  return allow();
}

function transfer(s, params) {
  const amount = amountOf(params.amount);
  if (amount === null) {
    return decision(
      "deny",
      "spend.invalid-amount",
      "The transfer amount is missing, not a number, or not above zero.",
      50,
    );
  }
  if (amount > s.deny_over) {
    return decision(
      "deny",
      "spend.over-limit",
      `The transfer of $${dollars(amount)} is over the hard limit of $${dollars(s.deny_over)}.`,
      90,
    );
  }
  if (amount > s.approval_over) {
    return decision(
      "require-approval",
      "spend.needs-approval",
      `The transfer of $${dollars(amount)} is over $${dollars(s.approval_over)} and needs approval.`,
      60,
    );
  }
  return allow();
}

// `params` that are not a JSON object count as `{}`.
function paramsOf(text) {
  try {
    const v = JSON.parse(text);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : {};
  } catch {
    return {};
  }
}

const hasRole = (principal, role) => principal != null && principal.roles.includes(role);

export function validateSettings(settings) {
  // A thrown string is the `err` of `result<_, string>`.
  try {
    parseSettings(settings);
  } catch (e) {
    throw e instanceof SettingsError ? e.message : String(e);
  }
}

// The settings last parsed: an instance kept for reuse (limits.reuse) is
// given the same settings every time, so it parses them once.
let parsed = { text: null, settings: null };

export function evaluate(action, context) {
  if (parsed.text !== context.settings) {
    parsed = { text: context.settings, settings: parseSettings(context.settings) };
  }
  const s = parsed.settings;
  const name = action.name;
  if (!s.tools.includes(name)) {
    return decision("deny", "tool.not-allowed", `Tool \`${name}\` is not one this agent may use.`, 70);
  }
  if (context.environment === "prod" && (hasRole(context.agent, "intern") || hasRole(context.user, "intern"))) {
    return decision("deny", "env.prod-intern", "Interns may not act in production, directly or through an agent.", 80);
  }
  const params = paramsOf(action.params);
  switch (name) {
    case "db.query":
      return query(s, action);
    case "send_email":
      return email(s, params);
    case "payments.transfer":
      return transfer(s, params);
    default:
      return allow();
  }
}
