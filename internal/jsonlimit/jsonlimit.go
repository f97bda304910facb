// Package jsonlimit holds the one nesting limit for every JSON document
// dpsd accepts from outside: device request bodies on every transport,
// service API and extension bodies, and the built-in hubs' REST bodies.
// encoding/json follows nesting up to 10,000 levels; a body that deep costs
// the decoder (and whatever walks the result later) for nothing a real
// document needs.
package jsonlimit

import "fmt"

// MaxDepth is the deepest nesting of objects and arrays accepted. An
// enrollment needs about five levels around an initial twin and IoT Hub
// limits twins to ten more, so 32 leaves room.
const MaxDepth = 32

// ErrTooDeep is what Check returns, wrapped with the limit.
var ErrTooDeep = fmt.Errorf("objects and arrays nest deeper than %d levels", MaxDepth)

// Check returns ErrTooDeep when data's objects and arrays nest deeper than
// MaxDepth. It only counts brackets outside strings; whether the JSON is
// otherwise valid is left to the decoder.
func Check(data []byte) error {
	depth := 0
	inString, escaped := false, false
	for _, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			if depth++; depth > MaxDepth {
				return ErrTooDeep
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}
