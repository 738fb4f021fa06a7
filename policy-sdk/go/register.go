package arbiter

import "errors"

// The registered policy, as the exports call it.
var (
	validate func(settings string) error
	decide   func(settings string, action *Action, context *Context) Decision
)

// Register makes evaluate the policy of this component, with settings
// parsed by ParseSettings over defaults. Call it once, from an init
// function of package main.
func Register[S any](defaults S, evaluate func(settings *S, action *Action, context *Context) Decision) {
	validate = func(text string) error {
		_, err := ParseSettings(text, defaults)
		return err
	}
	// The settings last parsed: an instance kept for reuse (limits.reuse)
	// is given the same settings every time, so it parses them once.
	var lastText *string
	var last S
	decide = func(text string, action *Action, context *Context) Decision {
		if lastText == nil || *lastText != text {
			settings, err := ParseSettings(text, defaults)
			if err != nil {
				// The host validated these settings at load; failing here
				// is a bug, and a deny says so rather than deciding on
				// defaults.
				return Deny("policy.settings", err.Error(), 100)
			}
			lastText, last = &text, settings
		}
		settings := last
		return evaluate(&settings, action, context)
	}
}

var errNotRegistered = errors.New("no policy is registered: call arbiter.Register in an init function")

// ValidateSettings runs the registered policy's settings check, as the host
// does at load; for tests, natively too.
func ValidateSettings(settings string) error {
	if validate == nil {
		return errNotRegistered
	}
	return validate(settings)
}

// Evaluate runs the registered policy on one action with settings (JSON),
// as the host does; for tests, natively too.
func Evaluate(settings string, action *Action, context *Context) (Decision, error) {
	if decide == nil {
		return Decision{}, errNotRegistered
	}
	return decide(settings, action, context), nil
}
