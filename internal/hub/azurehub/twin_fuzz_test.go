package azurehub

import (
	"encoding/json"
	"testing"
)

// FuzzTwinProperties: any body decodes to an error or to properties that
// encode again, and "desired": null is told from no "desired".
func FuzzTwinProperties(f *testing.F) {
	for _, s := range []string{`{"desired":null}`, `{"desired":{"a":1}}`, `{}`, `{"reported":{"x":[1,2]},"desired":{"b":{"c":null}}}`, `{"desired":7}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p TwinProperties
		if err := json.Unmarshal(data, &p); err != nil {
			return
		}
		if p.DesiredNull && p.Desired != nil {
			t.Fatalf("%q: desired null with properties %v", data, p.Desired)
		}
		if _, err := json.Marshal(p); err != nil {
			t.Fatalf("%q: encode: %v", data, err)
		}
	})
}
