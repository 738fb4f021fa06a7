//go:build wasip1

package arbiter

import (
	"encoding/json"

	// The generated glue: its //go:wasmexport functions are the component's
	// exports, and they call export_wit_world.
	_ "example.invalid/arbiter/policy-sdk/go/wit/exports/wit_exports"

	"example.invalid/arbiter/policy-sdk/go/wit/exports/export_wit_world"
	wit "example.invalid/arbiter/policy-sdk/go/wit/imports/arbiter_policy_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Register makes evaluate the policy of this component, with settings
// parsed by ParseSettings over defaults. Call it once, from an init
// function of package main.
func Register[S any](defaults S, evaluate func(settings *S, action *Action, context *Context) Decision) {
	export_wit_world.OnValidateSettings = func(text string) witTypes.Result[witTypes.Unit, string] {
		if _, err := ParseSettings(text, defaults); err != nil {
			return witTypes.Err[witTypes.Unit, string](err.Error())
		}
		return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
	}
	// The settings last parsed: an instance kept for reuse (limits.reuse)
	// is given the same settings every time, so it parses them once.
	var lastText *string
	var last S
	export_wit_world.OnEvaluate = func(a wit.Action, c wit.Context) wit.Decision {
		settings, err := last, error(nil)
		if lastText == nil || *lastText != c.Settings {
			settings, err = ParseSettings(c.Settings, defaults)
			if err == nil {
				text := c.Settings
				lastText, last = &text, settings
			}
		}
		if err != nil {
			// The host validated these settings at load; failing here is a
			// bug, and a deny says so rather than deciding on defaults.
			return toWit(Deny("policy.settings", err.Error(), 100))
		}
		action := Action{Kind: a.Kind, Name: a.Name, Target: a.Target, Params: paramsOf(a.Params)}
		context := contextOf(&c)
		return toWit(evaluate(&settings, &action, &context))
	}
}

// paramsOf decodes params; params that are not a JSON object count as {}.
func paramsOf(text string) Params {
	var p Params
	if json.Unmarshal([]byte(text), &p) != nil || p == nil {
		return Params{}
	}
	return p
}

func contextOf(c *wit.Context) Context {
	ctx := Context{
		Agent:       Principal{ID: c.Agent.Id, Roles: c.Agent.Roles},
		Environment: c.Environment,
		Session:     c.Session,
		Attributes:  make(map[string]string, len(c.Attributes)),
		History: History{
			CallsLastMinute:      c.History.CallsLastMinute,
			SameActionLastMinute: c.History.SameActionLastMinute,
			DenialsLastHour:      c.History.DenialsLastHour,
			SpendTodayCents:      c.History.SpendTodayCents,
		},
	}
	if c.User.IsSome() {
		u := c.User.Some()
		ctx.User = &Principal{ID: u.Id, Roles: u.Roles}
	}
	for _, kv := range c.Attributes {
		ctx.Attributes[kv.F0] = kv.F1
	}
	return ctx
}

func toWit(d Decision) wit.Decision {
	out := wit.Decision{
		Outcome: wit.Outcome(d.Outcome),
		Reason:  d.Reason,
		Rule:    d.Rule,
		Risk:    d.Risk,
		Params:  witTypes.None[string](),
	}
	if d.Outcome == OutcomeModify {
		params, err := json.Marshal(d.Params)
		if err != nil {
			return toWit(Deny("policy.modify-params", "The replacement params cannot be written as JSON: "+err.Error(), 100))
		}
		out.Params = witTypes.Some(string(params))
	}
	return out
}
