package jsonlimit

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{"flat", `{"a":1}`, true},
		{"at the limit", nest(MaxDepth), true},
		{"over the limit", nest(MaxDepth + 1), false},
		{"5000 deep", nest(5000), false},
		{"brackets in strings", `{"a":"` + strings.Repeat("[", 100) + `\"["}`, true},
	} {
		if err := Check([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("%s: Check = %v", tc.name, err)
		}
	}
}
