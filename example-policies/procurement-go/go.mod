module example.invalid/arbiter/example-policies/procurement-go

go 1.27.1

require example.invalid/arbiter/policy-sdk/go v0.0.0

require go.bytecodealliance.org/pkg v0.4.0 // indirect
