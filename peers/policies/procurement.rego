# The procurement policy of shared/scenarios/POLICIES.md in Rego: the same
# rules in the same order, reading the wire JSON as `input` and the
# policy's settings (merged over its defaults at load) as `data.settings`.
package procurement

import rego.v1

settings := data.settings

action := input.action

name := action.name

params := p if {
	p := action.params
	is_object(p)
} else := {}

roles contains r if some r in input.context.agent.roles

roles contains r if some r in input.context.user.roles

# A recipient list: a string (unless empty), each string of an array
# (empty ones ignored), and anything else as a malformed recipient.
recipients(value) := [value] if {
	is_string(value)
	value != ""
} else := [] if {
	is_string(value)
} else := [r | some r in value; r != ""] if {
	is_array(value)
} else := [] if {
	value == null
} else := [value]

to := recipients(object.get(params, "to", null))

all_recipients := array.concat(to, recipients(object.get(params, "cc", null)))

# Exactly one `@`, a non-empty part before it, no white space, `,` or `;`,
# and the part after it one of the allowed domains, ignoring case.
allowed_address(a) if {
	is_string(a)
	not regex.match(`[\s,;]`, a)
	parts := split(a, "@")
	count(parts) == 2
	parts[0] != ""
	some d in settings.email_domains
	lower(parts[1]) == lower(d)
}

external_recipient if {
	some a in all_recipients
	not allowed_address(a)
}

table := substring(action.target, 7, -1) if {
	lower(substring(action.target, 0, 7)) == "public."
} else := action.target

amount := a if {
	a := params.amount
	is_number(a)
	a > 0
}

deny(rule, risk) := {"outcome": "deny", "rule": rule, "risk": risk}

decision := deny("tool.not-allowed", 70) if {
	not name in settings.tools
} else := deny("env.prod-intern", 80) if {
	input.context.environment == "prod"
	"intern" in roles
} else := deny("db.table-not-allowed", 70) if {
	name == "db.query"
	not lower(table) in {lower(t) | some t in settings.tables}
} else := deny("email.no-recipient", 40) if {
	name == "send_email"
	count(to) == 0
} else := deny("email.external-recipient", 80) if {
	name == "send_email"
	external_recipient
} else := deny("spend.invalid-amount", 50) if {
	name == "payments.transfer"
	not amount
} else := deny("spend.over-limit", 90) if {
	name == "payments.transfer"
	amount > settings.deny_over
} else := {"outcome": "require-approval", "rule": "spend.needs-approval", "risk": 60} if {
	name == "payments.transfer"
	amount > settings.approval_over
} else := {"outcome": "allow", "rule": "default.allow", "risk": 0}
