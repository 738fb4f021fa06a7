// Package export_wit_world is where the generated export glue
// (../wit_exports) calls the policy's functions. It is written by hand, not
// generated: it forwards to the functions the arbiter package installs, so
// a policy author never touches the bindings.
package export_wit_world

import (
	"example.invalid/arbiter/policy-sdk/go/wit/imports/arbiter_policy_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// OnValidateSettings and OnEvaluate are installed by arbiter.Register.
var (
	OnValidateSettings func(settings string) witTypes.Result[witTypes.Unit, string]
	OnEvaluate         func(action arbiter_policy_types.Action, context arbiter_policy_types.Context) arbiter_policy_types.Decision
)

// ValidateSettings implements the world's `validate-settings` export.
func ValidateSettings(settings string) witTypes.Result[witTypes.Unit, string] {
	if OnValidateSettings == nil {
		return witTypes.Err[witTypes.Unit, string]("no policy is registered: call arbiter.Register in an init function")
	}
	return OnValidateSettings(settings)
}

// Evaluate implements the world's `evaluate` export.
func Evaluate(action arbiter_policy_types.Action, context arbiter_policy_types.Context) arbiter_policy_types.Decision {
	if OnEvaluate == nil {
		panic("no policy is registered: call arbiter.Register in an init function")
	}
	return OnEvaluate(action, context)
}
