//go:build wasip1

package arbiter

import (
	"encoding/json"

	// The generated glue: its //go:wasmexport functions are the component's
	// exports, and they call export_wit_world.
	_ "example.invalid/arbiter/policy-sdk/go/wit/exports/wit_exports"

	"example.invalid/arbiter/policy-sdk/go/wit/exports/export_wit_world"
	"example.invalid/arbiter/policy-sdk/go/wit/imports/arbiter_policy_flow"
	wit "example.invalid/arbiter/policy-sdk/go/wit/imports/arbiter_policy_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Connects the component's exports to the registered policy, and
// LabelsOf to the host.
func init() {
	labelsOf = arbiter_policy_flow.LabelsOf
	export_wit_world.OnValidateSettings = func(text string) witTypes.Result[witTypes.Unit, string] {
		if err := ValidateSettings(text); err != nil {
			return witTypes.Err[witTypes.Unit, string](err.Error())
		}
		return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
	}
	export_wit_world.OnEvaluate = func(a wit.Action, c wit.Context) wit.Decision {
		action := Action{Kind: a.Kind, Name: a.Name, Target: a.Target, Params: ParamsOf(a.Params)}
		context := contextOf(&c)
		d, err := Evaluate(c.Settings, &action, &context)
		if err != nil {
			return toWit(Deny("policy.unregistered", err.Error(), 100))
		}
		return toWit(d)
	}
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
	for _, l := range c.Labels {
		o := l.Origin
		ctx.Labels = append(ctx.Labels, Label{Name: l.Name, Origin: Origin{
			DecisionID: o.DecisionId, Kind: o.Kind, Name: o.Name, Target: o.Target, AtMs: o.AtMs,
		}})
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
		Labels:  append([]string{}, d.Labels...),
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
