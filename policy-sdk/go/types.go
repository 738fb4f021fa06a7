// Package arbiter is the Go SDK for Arbiter policies: a policy is a plain
// function of typed settings, an action and its context, returning a
// Decision. Register it once from an init function; the SDK does the rest
// (the component bindings, settings parsing with errors that name the key,
// and the host's JSON shapes).
//
//	func init() { arbiter.Register(Settings{Limit: 5}, evaluate) }
//	func evaluate(s *Settings, a *arbiter.Action, c *arbiter.Context) arbiter.Decision { ... }
//	func main() {}
package arbiter

import "encoding/json"

// Action is what an agent asks to do, as seen at an interception point.
type Action struct {
	// Kind is the interception point: "tool", "mcp", "http", "db", "shell", ...
	Kind string
	// Name is the tool, endpoint or command, e.g. "payments.transfer".
	Name string
	// Target is what is touched: URL, table, path, host; "" when none.
	Target string
	// Params are the arguments; params that are not a JSON object are empty.
	Params Params
}

// Params are an action's arguments, decoded from JSON: numbers are
// float64, lists []any, objects map[string]any.
type Params map[string]any

// Param returns the param named key, or nil when it is missing.
func (a *Action) Param(key string) any { return a.Params[key] }

// Principal is who acts: an agent, or the user it acts for.
type Principal struct {
	// ID is the stable identifier.
	ID string
	// Roles are as the caller's identity system names them.
	Roles []string
}

// HasRole reports whether p has exactly role.
func (p *Principal) HasRole(role string) bool {
	if p == nil {
		return false
	}
	for _, r := range p.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// History holds the counters the host keeps per agent.
type History struct {
	CallsLastMinute      uint32
	SameActionLastMinute uint32
	DenialsLastHour      uint32
	SpendTodayCents      uint64
}

// Origin is the action whose result brought a label into the session.
type Origin struct {
	// DecisionID is the decision on that result.
	DecisionID string
	// Kind, Name and Target are the call's: "mcp", "read_text_file", "/srv/crm.txt".
	Kind   string
	Name   string
	Target string
	// AtMs is when, in milliseconds since the Unix epoch.
	AtMs uint64
}

// Label is a label the session holds, with the result that first brought it.
type Label struct {
	// Name is from the host's vocabulary: "private", "untrusted", "customer:42".
	Name   string
	Origin Origin
}

// Context is everything a policy may know besides the action itself.
type Context struct {
	// Agent is the agent that acts.
	Agent Principal
	// User is on whose behalf it acts; nil when unknown.
	User *Principal
	// Environment is "dev", "staging", "prod", ...
	Environment string
	// Session identifies the agent's session.
	Session string
	// Attributes are free-form facts: data classification, region, ...
	Attributes map[string]string
	// History is filled by the host; a caller cannot set it.
	History History
	// Labels are those of the results this session has seen, filled by the host.
	Labels []Label
}

// Label returns the session's label name, or nil when it does not hold it.
func (c *Context) Label(name string) *Label {
	for i := range c.Labels {
		if c.Labels[i].Name == name {
			return &c.Labels[i]
		}
	}
	return nil
}

// AnyoneHasRole reports whether the agent or the user has role.
func (c *Context) AnyoneHasRole(role string) bool {
	return c.Agent.HasRole(role) || c.User.HasRole(role)
}

// Outcome is what a policy decides.
type Outcome uint8

// The outcomes; the host combines a chain with deny > require-approval >
// modify > allow.
const (
	OutcomeAllow Outcome = iota
	OutcomeDeny
	OutcomeRequireApproval
	OutcomeModify
)

// Decision is a policy's answer.
type Decision struct {
	Outcome Outcome
	// Reason is one sentence an auditor can read.
	Reason string
	// Rule is the stable id of the rule that decided, e.g. "email.external-recipient".
	Rule string
	// Risk is 0 (none) to 100 (critical).
	Risk uint8
	// Params are the replacement params, with OutcomeModify only.
	Params any
	// Labels are attached to the result the decision is about (an action
	// of kind "*.result"); the session holds them once it is let through.
	Labels []string
}

// WithLabels returns d attaching labels to the result it is about.
func (d Decision) WithLabels(labels ...string) Decision {
	d.Labels = append(append([]string(nil), d.Labels...), labels...)
	return d
}

// Allow lets the action run, with risk 0.
func Allow(rule, reason string) Decision {
	return Decision{Outcome: OutcomeAllow, Rule: rule, Reason: reason}
}

// Deny refuses the action.
func Deny(rule, reason string, risk uint8) Decision {
	return Decision{Outcome: OutcomeDeny, Rule: rule, Reason: reason, Risk: risk}
}

// RequireApproval lets the action run once a person approves it.
func RequireApproval(rule, reason string, risk uint8) Decision {
	return Decision{Outcome: OutcomeRequireApproval, Rule: rule, Reason: reason, Risk: risk}
}

// Modify lets the action run with params replaced by params (marshalled
// to JSON by the SDK).
func Modify(rule, reason string, risk uint8, params any) Decision {
	return Decision{Outcome: OutcomeModify, Rule: rule, Reason: reason, Risk: risk, Params: params}
}

// ParamsOf decodes params JSON; params that are not a JSON object count
// as empty.
func ParamsOf(text string) Params {
	var p Params
	if json.Unmarshal([]byte(text), &p) != nil || p == nil {
		return Params{}
	}
	return p
}
