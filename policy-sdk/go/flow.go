package arbiter

// labelsOf answers LabelsOf: the host's `labels-of` in a component; on any
// other target nothing, unless a test sets AnswerLabelsOf.
var labelsOf = func(string) []string { return nil }

// LabelsOf returns the labels of this session's results that value holds
// a copy of (verbatim, or differing only in case and whitespace).
func LabelsOf(value string) []string { return labelsOf(value) }
