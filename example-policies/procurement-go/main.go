// The procurement agent's policy in Go: the same defaults, rules, risks
// and reasons as the Rust build in ../procurement, on the Go SDK in
// policy-sdk/go (see policy-sdk/README.md for the build).
package main

import (
	"fmt"
	"slices"
	"strings"

	arbiter "example.invalid/arbiter/policy-sdk/go"
)

// Settings; a missing key takes the default in defaults.
type Settings struct {
	// Tools the agent may call at all.
	Tools []string `json:"tools"`
	// Tables db.query may touch.
	Tables []string `json:"tables"`
	// Domains send_email may write to.
	EmailDomains []string `json:"email_domains"`
	// Transfers above this many dollars need approval.
	ApprovalOver float64 `json:"approval_over"`
	// Transfers above this many dollars are refused.
	DenyOver float64 `json:"deny_over"`
}

var defaults = Settings{
	Tools:        []string{"db.query", "send_email", "payments.transfer", "workflow.trigger"},
	Tables:       []string{"orders", "suppliers", "invoices", "purchase_orders"},
	EmailDomains: []string{"corp.example"},
	ApprovalOver: 5000,
	DenyOver:     50000,
}

func init() { arbiter.Register(defaults, evaluate) }

// main is never called: the host calls the exports.
func main() {}

func evaluate(s *Settings, action *arbiter.Action, context *arbiter.Context) arbiter.Decision {
	name := action.Name
	if !slices.Contains(s.Tools, name) {
		return arbiter.Deny("tool.not-allowed", fmt.Sprintf("Tool `%s` is not one this agent may use.", name), 70)
	}
	if context.Environment == "prod" && context.AnyoneHasRole("intern") {
		return arbiter.Deny("env.prod-intern", "Interns may not act in production, directly or through an agent.", 80)
	}
	switch name {
	case "db.query":
		return query(s, action)
	case "send_email":
		return email(s, action)
	case "payments.transfer":
		return transfer(s, action)
	}
	return allow()
}

func query(s *Settings, action *arbiter.Action) arbiter.Decision {
	table := action.Target
	if len(table) >= 7 && arbiter.ASCIILower(table[:7]) == "public." {
		table = table[7:]
	}
	if !arbiter.ContainsIgnoreCase(s.Tables, table) {
		return arbiter.Deny("db.table-not-allowed", fmt.Sprintf("Table `%s` is not one this agent may query.", table), 70)
	}
	return allow()
}

func email(s *Settings, action *arbiter.Action) arbiter.Decision {
	if arbiter.RecipientsOf(action.Params, "to").Empty() {
		return arbiter.Deny("email.no-recipient", "The e-mail has no recipient.", 40)
	}
	inDomains := func(a string) bool { return arbiter.InDomains(a, s.EmailDomains) }
	if !arbiter.RecipientsOf(action.Params, "to", "cc").All(inDomains) {
		return arbiter.Deny("email.external-recipient", fmt.Sprintf(
			"A recipient is not a well-formed address in the allowed domains (%s).",
			strings.Join(s.EmailDomains, ", ")), 80)
	}
	return allow()
}

func transfer(s *Settings, action *arbiter.Action) arbiter.Decision {
	amount, ok := arbiter.Amount(action.Param("amount"))
	if !ok {
		return arbiter.Deny("spend.invalid-amount", "The transfer amount is missing, not a number, or not above zero.", 50)
	}
	dollars := arbiter.FormatNumber
	if amount > s.DenyOver {
		return arbiter.Deny("spend.over-limit", fmt.Sprintf(
			"The transfer of $%s is over the hard limit of $%s.", dollars(amount), dollars(s.DenyOver)), 90)
	}
	if amount > s.ApprovalOver {
		return arbiter.RequireApproval("spend.needs-approval", fmt.Sprintf(
			"The transfer of $%s is over $%s and needs approval.", dollars(amount), dollars(s.ApprovalOver)), 60)
	}
	return allow()
}

func allow() arbiter.Decision {
	return arbiter.Allow("default.allow", "No procurement rule forbids this action.")
}
