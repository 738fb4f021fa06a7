//go:build !wasip1

package arbiter

// AnswerLabelsOf makes LabelsOf answer with answer, for a policy's native
// tests; a component always asks the host.
func AnswerLabelsOf(answer func(value string) []string) { labelsOf = answer }
