package arbiter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// SettingsError is settings that do not parse, naming the key at fault.
type SettingsError struct {
	// Key is where the problem is, e.g. "tables"; empty for the document.
	Key string
	// Message says what is wrong there.
	Message string
}

func (e *SettingsError) Error() string {
	if e.Key == "" {
		return "settings: " + e.Message
	}
	return fmt.Sprintf("settings key `%s`: %s", e.Key, e.Message)
}

// ParseSettings decodes settings JSON over defaults, a struct whose fields
// carry `json:"name"` tags. A key left out keeps its default; an unknown
// key (names match exactly, not ignoring case as encoding/json would), a
// null, or a value of the wrong type is a *SettingsError naming the key.
// An empty document or null means no overrides.
func ParseSettings[S any](text string, defaults S) (S, error) {
	settings := defaults
	text = strings.TrimSpace(text)
	if text == "" || text == "null" {
		return settings, nil
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &doc); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return settings, &SettingsError{Message: "expected an object of settings"}
		}
		return settings, &SettingsError{Message: "not JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	known := fieldNames(reflect.TypeOf(settings))
	keys := make([]string, 0, len(doc))
	for key := range doc {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if !known[key] {
			return settings, &SettingsError{Key: key, Message: "unknown field, expected one of " + quoted(known)}
		}
		if bytes.Equal(bytes.TrimSpace(doc[key]), []byte("null")) {
			return settings, &SettingsError{Key: key, Message: "null is not a value; leave the key out for its default"}
		}
	}
	if err := json.Unmarshal([]byte(text), &settings); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return defaults, &SettingsError{
				Key:     typeErr.Field,
				Message: fmt.Sprintf("expected %s, got a JSON %s", describe(typeErr.Type), typeErr.Value),
			}
		}
		return defaults, &SettingsError{Message: strings.TrimPrefix(err.Error(), "json: ")}
	}
	return settings, nil
}

// fieldNames are the JSON names of a struct's exported fields.
func fieldNames(t reflect.Type) map[string]bool {
	names := map[string]bool{}
	if t == nil || t.Kind() != reflect.Struct {
		return names
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names[name] = true
	}
	return names
}

func quoted(set map[string]bool) string {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, "`"+n+"`")
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func describe(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return "a list of " + describe(t.Elem())
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}
