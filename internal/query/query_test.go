package query

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

const enrollment = `{"registrationId":"Dev-1","provisioningStatus":"enabled","allocationPolicy":"custom",
"attestation":{"type":"symmetricKey"},"iotHubs":["a","b"],"capabilities":{"iotEdge":true},"weight":2}`

func decode(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMatch(t *testing.T) {
	item := decode(t, enrollment)
	tests := []struct {
		query string
		want  bool
	}{
		{"", true},
		{"*", true},
		{" * ", true},
		{"SELECT * FROM enrollments", true},
		{"select * from c", true},
		{"SELECT *", true},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'enabled'", true},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'", false},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'enabled' AND allocationPolicy = 'custom'", true},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'enabled' AND allocationPolicy = 'hashed'", false},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'disabled' OR allocationPolicy = 'custom'", true},
		{"SELECT * FROM enrollments WHERE NOT provisioningStatus = 'enabled'", false},
		{"SELECT * FROM enrollments WHERE provisioningStatus != 'enabled'", false},
		{"SELECT * FROM enrollments WHERE provisioningStatus <> 'disabled'", true},
		{"SELECT * FROM enrollments WHERE PROVISIONINGSTATUS = 'ENABLED'", true}, // names and strings ignore case
		{"SELECT * FROM enrollments WHERE registrationId = 'dev-1'", true},
		{"SELECT * FROM enrollments WHERE attestation.type = 'symmetricKey'", true},
		{"SELECT * FROM enrollments WHERE attestation.type = 'x509'", false},
		{"SELECT * FROM enrollments WHERE capabilities.iotEdge = true", true},
		{"SELECT * FROM enrollments WHERE capabilities.iotEdge = false", false},
		{"SELECT * FROM enrollments WHERE weight = 2", true},
		{"SELECT * FROM enrollments WHERE weight = 2.0", true},
		{"SELECT * FROM enrollments WHERE weight = '2'", false}, // no conversions
		{"SELECT * FROM enrollments WHERE allocationPolicy IN ('hashed', 'custom')", true},
		{"SELECT * FROM enrollments WHERE allocationPolicy NOT IN ('hashed', 'custom')", false},
		{"SELECT * FROM enrollments WHERE deviceId IS NULL", true}, // missing is null
		{"SELECT * FROM enrollments WHERE deviceId = null", true},
		{"SELECT * FROM enrollments WHERE registrationId IS NOT NULL", true},
		{"SELECT * FROM enrollments WHERE attestation.type.x = 'a'", false},
		{"SELECT * FROM enrollments WHERE iotHubs = 'a'", false}, // arrays equal no literal
		{"SELECT * FROM enrollments WHERE (provisioningStatus = 'disabled' OR weight = 2) AND NOT (allocationPolicy = 'hashed')", true},
		{"SELECT * FROM enrollments WHERE provisioningStatus = 'disabled' OR weight = 2 AND allocationPolicy = 'hashed'", false}, // AND binds tighter
		{"SELECT * FROM enrollments WHERE registrationId = 'it''s'", false},
	}
	for _, tc := range tests {
		q, err := Parse(tc.query)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.query, err)
			continue
		}
		if got := q.Match(item); got != tc.want {
			t.Errorf("%q matches %v, want %v", tc.query, got, tc.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct{ query, want string }{
		{"SELECT registrationId FROM enrollments", "only SELECT *"},
		{"SELECT * FROM enrollments WHERE STARTSWITH(registrationId, 'a')", "functions"},
		{"SELECT * FROM enrollments ORDER BY registrationId", "expected the end of the query at position 27"},
		{"SELECT * FROM enrollments WHERE registrationId > 'a'", `">" at position 48 is not supported`},
		{"SELECT * FROM enrollments WHERE registrationId LIKE 'a'", "expected =, !=, <>, IN or IS"},
		{"SELECT * FROM enrollments WHERE registrationId = enabled", "strings take single quotes"},
		{"SELECT * FROM enrollments WHERE registrationId = 'open", "no closing quote"},
		{"SELECT * FROM enrollments WHERE", "expected a property name at the end"},
		{"SELECT * FROM enrollments WHERE a = 'x' AND", "expected a property name at the end"},
		{"SELECT * FROM enrollments WHERE (a = 'x'", `expected ")"`},
		{"SELECT * FROM enrollments WHERE a IN ()", "expected a value"},
		{"SELECT * FROM enrollments WHERE a IN ('x' 'y')", `expected "," or ")"`},
		{"SELECT * FROM enrollments WHERE a = \"x\"", `not supported`},
		{"SELECT * FROM enrollments WHERE a = 1e999", "not a number"},
		{"SELECT * FROM enrollments WHERE where = 'x'", "expected a property name"},
		{"DELETE FROM enrollments", "expected SELECT"},
		{"SELECT * FROM", "expected a collection name"},
		{"SELECT * FROM enrollments WHERE " + strings.Repeat("(", MaxDepth+1) + "a = 'x'" + strings.Repeat(")", MaxDepth+1), "nests deeper"},
		{"SELECT * FROM enrollments WHERE " + strings.Repeat("a = 'x' OR ", MaxTerms) + "a = 'x'", "more than 64 terms"},
		{strings.Repeat(" ", MaxLength+1), "at most 4096"},
		{"SELECT * FROM enrollments WHERE a = '\xff'", "UTF-8"},
	}
	for _, tc := range tests {
		_, err := Parse(tc.query)
		var de *dps.Error
		if !errors.As(err, &de) || de.ErrorCode != dps.CodeBadRequest {
			t.Errorf("Parse(%.60q) = %v, want a 400 error", tc.query, err)
			continue
		}
		if !strings.Contains(de.Message, tc.want) || !strings.HasPrefix(de.Message, "Unsupported query: ") {
			t.Errorf("Parse(%.60q): %q lacks %q", tc.query, de.Message, tc.want)
		}
	}
}

func TestMatchValue(t *testing.T) {
	q, err := Parse("SELECT * FROM enrollments WHERE provisioningStatus = 'enabled'")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		v    dps.IndividualEnrollment
		want bool
	}{
		{dps.IndividualEnrollment{RegistrationID: "a", ProvisioningStatus: dps.ProvisioningEnabled}, true},
		{dps.IndividualEnrollment{RegistrationID: "b", ProvisioningStatus: dps.ProvisioningDisabled}, false},
	} {
		if got, err := q.MatchValue(&tc.v); err != nil || got != tc.want {
			t.Errorf("%s: %v, %v", tc.v.RegistrationID, got, err)
		}
	}
}

// FuzzParse: no text crashes or hangs the parser; whatever it accepts it
// can evaluate, and whatever it refuses it refuses with a 400.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "*", "SELECT * FROM c WHERE a.b = 'x' AND (c != 1 OR d IN ('a', 2, true, null)) AND e IS NOT NULL",
		"SELECT * FROM enrollments WHERE NOT NOT a = 'it''s'", "SELECT a FROM", "((((", "'", "-1e5"} {
		f.Add(s)
	}
	item := map[string]any{"a": map[string]any{"b": "x"}, "c": 1.0, "d": []any{"a"}}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := Parse(s)
		if err != nil {
			var de *dps.Error
			if !errors.As(err, &de) || de.ErrorCode != dps.CodeBadRequest {
				t.Fatalf("Parse(%q): %v is not a 400", s, err)
			}
			return
		}
		q.Match(item)
		q.Match(nil)
	})
}
