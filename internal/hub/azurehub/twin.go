package azurehub

import "strings"

// StripMeta returns m without the "$version", "$metadata" and other '$'
// keys that twin responses add and clients echo back. It returns an empty
// map, not nil, for a nil m.
func StripMeta(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}
