package arbiter

import (
	"math"
	"strconv"
	"strings"
	"unicode"
)

// Recipients are the recipients found in one or more params, such as "to"
// and "cc": a string for each address, nil for a value that is not one.
type Recipients []*string

// RecipientsOf collects the recipients of each of keys. A param that is
// missing, null, "" or [] adds none; empty strings inside a list are
// ignored; any other value that is not a string or a list of strings adds
// a recipient that matches no domain.
func RecipientsOf(params Params, keys ...string) Recipients {
	var out Recipients
	push := func(s string) {
		if s != "" {
			out = append(out, &s)
		}
	}
	for _, key := range keys {
		switch v := params[key].(type) {
		case nil:
		case string:
			push(v)
		case []any:
			for _, item := range v {
				if s, ok := item.(string); ok {
					push(s)
				} else {
					out = append(out, nil)
				}
			}
		default:
			out = append(out, nil)
		}
	}
	return out
}

// Empty reports whether there is no recipient at all.
func (r Recipients) Empty() bool { return len(r) == 0 }

// All reports whether every recipient passes ok; one that is not a
// string never does.
func (r Recipients) All(ok func(address string) bool) bool {
	for _, a := range r {
		if a == nil || !ok(*a) {
			return false
		}
	}
	return true
}

// DomainOf returns the lower-cased domain of a well-formed address:
// exactly one "@", a non-empty part before it, and no white space, "," or
// ";" anywhere.
func DomainOf(address string) (string, bool) {
	if strings.ContainsFunc(address, func(r rune) bool {
		return unicode.IsSpace(r) || r == ',' || r == ';'
	}) {
		return "", false
	}
	local, domain, found := strings.Cut(address, "@")
	if !found || local == "" || strings.Contains(domain, "@") {
		return "", false
	}
	return ASCIILower(domain), true
}

// InDomains reports whether a well-formed address is in one of domains
// exactly (ignoring ASCII case); subdomains and look-alikes are not.
func InDomains(address string, domains []string) bool {
	domain, ok := DomainOf(address)
	return ok && ContainsIgnoreCase(domains, domain)
}

// Amount returns a valid amount: a JSON number greater than zero. A
// missing value, a string (even "9000"), zero or a negative number is not.
func Amount(v any) (float64, bool) {
	f, ok := v.(float64)
	if !ok || math.IsInf(f, 0) || math.IsNaN(f) || f <= 0 {
		return 0, false
	}
	return f, true
}

// ContainsIgnoreCase reports whether list holds item, ignoring ASCII case.
func ContainsIgnoreCase(list []string, item string) bool {
	item = ASCIILower(item)
	for _, x := range list {
		if ASCIILower(x) == item {
			return true
		}
	}
	return false
}

// ASCIILower lower-cases ASCII letters only, the way every Arbiter SDK
// compares names: Unicode case folding would let look-alikes match.
func ASCIILower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// FormatNumber prints f with the fewest digits that read back the same and
// never an exponent (5000, 5000.01), as the Rust SDK prints numbers.
func FormatNumber(f float64) string {
	return strconv.FormatFloat(f, 'f', -1, 64)
}
