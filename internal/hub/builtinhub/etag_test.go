package builtinhub

import "testing"

// TestETagMatches checks that hub If-Match values are read as enroll reads
// them, including the escaped quotes some clients send.
func TestETagMatches(t *testing.T) {
	for _, tt := range []struct {
		ifMatch string
		want    bool
	}{
		{"", true},
		{"*", true},
		{"abc", true},
		{`"abc"`, true},
		{`W/"abc"`, true},
		{` "abc" `, true},
		{`\"abc\"`, true},
		{`"abd"`, false},
		{"ab", false},
	} {
		if got := etagMatches(tt.ifMatch, "abc"); got != tt.want {
			t.Errorf("etagMatches(%q, abc) = %v, want %v", tt.ifMatch, got, tt.want)
		}
	}
}
