package arbiter

import (
	"errors"
	"strings"
	"testing"
)

func TestRecipientsAndDomainsMatchTheRustSDK(t *testing.T) {
	params := Params{"to": []any{"a@corp.example", "", 42.0}, "cc": "B@CORP.example"}
	r := RecipientsOf(params, "to", "cc")
	if len(r) != 3 || r[1] != nil {
		t.Fatalf("recipients: %v", r)
	}
	if RecipientsOf(Params{"to": ""}, "to").Empty() != true {
		t.Fatal("an empty string is no recipient")
	}
	domains := []string{"corp.example"}
	for address, want := range map[string]bool{
		"bob@corp.example":              true,
		"Bob@CORP.example":              true,
		"bob@corp.example.evil.io":      false,
		"bob@evilcorp.example":          false,
		"bob@sub.corp.example":          false,
		"eve@evil.io, bob@corp.example": false,
		"a@b@corp.example":              false,
		"@corp.example":                 false,
		"bob\u00a0@corp.example":        false,
		"bob":                           false,
	} {
		if got := InDomains(address, domains); got != want {
			t.Errorf("InDomains(%q) = %v, want %v", address, got, want)
		}
	}
	// ASCII case only: a Kelvin sign is not a K.
	if ContainsIgnoreCase([]string{"k"}, "\u212a") {
		t.Error("Unicode case folding must not apply")
	}
}

func TestAmountsAndNumbers(t *testing.T) {
	for _, bad := range []any{nil, "9000", 0.0, -5.0, true} {
		if _, ok := Amount(bad); ok {
			t.Errorf("Amount(%v) is valid", bad)
		}
	}
	if a, ok := Amount(12.5); !ok || a != 12.5 {
		t.Error("12.5")
	}
	for f, want := range map[float64]string{75000: "75000", 5000.01: "5000.01", 1e21: "1000000000000000000000"} {
		if got := FormatNumber(f); got != want {
			t.Errorf("FormatNumber(%v) = %s", f, got)
		}
	}
}

type settings struct {
	Tables []string `json:"tables"`
	Limit  float64  `json:"limit"`
}

func TestSettingsNameTheKey(t *testing.T) {
	defaults := settings{Tables: []string{"orders"}, Limit: 5}
	s, err := ParseSettings(`{"limit": 7}`, defaults)
	if err != nil || s.Limit != 7 || s.Tables[0] != "orders" {
		t.Fatalf("override: %v %v", s, err)
	}
	for _, empty := range []string{"", " null ", "{}"} {
		if s, err := ParseSettings(empty, defaults); err != nil || s.Limit != 5 {
			t.Errorf("%q: %v %v", empty, s, err)
		}
	}
	for text, key := range map[string]string{
		`{"tabels": []}`:    "tabels",
		`{"Tables": ["x"]}`: "Tables",
		`{"limit": "many"}`: "limit",
		`{"tables": [1]}`:   "tables",
		`{"tables": null}`:  "tables",
		`[1, 2]`:            "",
		`{"limit": 1`:       "",
	} {
		_, err := ParseSettings(text, defaults)
		var se *SettingsError
		if !errors.As(err, &se) {
			t.Errorf("%s: no SettingsError: %v", text, err)
			continue
		}
		if !strings.HasPrefix(se.Key, key) {
			t.Errorf("%s: key %q, want %q (%v)", text, se.Key, key, err)
		}
	}
}
