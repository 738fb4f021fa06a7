package main

import (
	"testing"

	arbiter "example.invalid/arbiter/policy-sdk/go"
)

// The policy's logic, natively; the component itself is checked against
// every case by the host's cross-language conformance test.
func TestTransferThresholdsAndSettings(t *testing.T) {
	prod := &arbiter.Context{Agent: arbiter.Principal{ID: "bot", Roles: []string{"procurement"}}, Environment: "prod"}
	pay := func(settings string, amount any) arbiter.Decision {
		a := &arbiter.Action{Kind: "tool", Name: "payments.transfer", Params: arbiter.Params{"amount": amount}}
		d, err := arbiter.Evaluate(settings, a, prod)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, c := range []struct {
		settings string
		amount   any
		rule     string
	}{
		{"{}", 5000.0, "default.allow"},
		{"{}", 5000.01, "spend.needs-approval"},
		{"{}", 75000.0, "spend.over-limit"},
		{"{}", "9000", "spend.invalid-amount"},
		{`{"approval_over": 100}`, 150.0, "spend.needs-approval"},
	} {
		if d := pay(c.settings, c.amount); d.Rule != c.rule {
			t.Errorf("%s %v: %s (%s)", c.settings, c.amount, d.Rule, d.Reason)
		}
	}
	if err := arbiter.ValidateSettings(`{"tabels": []}`); err == nil {
		t.Error("an unknown key must be refused")
	}
}
