package enroll

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"github.com/dpsd/dpsd/api/dps"
)

// Twin limits, as Azure IoT Hub documents them. The built-in hubs enforce
// them, and dpsd checks initial twins against them before anything is
// written, so a twin a hub would refuse never gets as far as a half-made
// device identity.
const (
	MaxTwinDepth       = 10
	MaxTwinKeyBytes    = 1024
	MaxTwinStringBytes = 4096
	MaxTwinTagsBytes   = 8 << 10
	MaxTwinPropsBytes  = 32 << 10
)

// ValidateInitialTwin checks an initial twin (an enrollment's, or one a
// custom allocation answered) against the hub's twin limits. A nil twin is
// valid.
func ValidateInitialTwin(t *dps.InitialTwin) error {
	if t == nil {
		return nil
	}
	if err := validateTwinSection("initialTwin.tags", t.Tags, MaxTwinTagsBytes); err != nil {
		return err
	}
	if t.Properties != nil {
		if err := validateTwinSection("initialTwin.properties.desired", t.Properties.Desired, MaxTwinPropsBytes); err != nil {
			return err
		}
	}
	return nil
}

func validateTwinSection(path string, raw json.RawMessage, maxBytes int) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "%s must be a JSON object.", path)
	}
	m = withoutMeta(m)
	if err := ValidateTwinPatch(path, m); err != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "The initial twin would be refused by the IoT hub: %v.", err)
	}
	if n := TwinJSONSize(m); n > maxBytes {
		return dps.Errorf(dps.CodeInvalidArgument, "The initial twin would be refused by the IoT hub: %s is %d bytes, more than %d.", path, n, maxBytes)
	}
	return nil
}

// TwinJSONSize is the size of v encoded as JSON, as hubs count twin sizes.
func TwinJSONSize(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return len(b)
}

// ValidateTwinPatch checks a twin's tags or properties (or a patch of
// them) against the hub's rules: property names, nesting depth and string
// lengths. path names the section in errors.
func ValidateTwinPatch(path string, m map[string]any) error {
	return validateTwinLevel(path, m, 1)
}

func validateTwinLevel(path string, m map[string]any, depth int) error {
	if depth > MaxTwinDepth {
		return fmt.Errorf("%s: nesting deeper than %d levels", path, MaxTwinDepth)
	}
	for k, v := range m {
		if err := validTwinKey(k); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := validateTwinValue(path+"."+k, v, depth); err != nil {
			return err
		}
	}
	return nil
}

func validateTwinValue(path string, v any, depth int) error {
	switch x := v.(type) {
	case map[string]any:
		return validateTwinLevel(path, x, depth+1)
	case []any:
		for _, e := range x {
			if e == nil {
				continue
			}
			if err := validateTwinValue(path, e, depth+1); err != nil {
				return err
			}
		}
	case string:
		if len(x) > MaxTwinStringBytes {
			return fmt.Errorf("%s: string longer than %d bytes", path, MaxTwinStringBytes)
		}
	}
	return nil
}

func validTwinKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty property name")
	}
	if len(k) > MaxTwinKeyBytes {
		return fmt.Errorf("property name longer than %d bytes", MaxTwinKeyBytes)
	}
	if strings.HasPrefix(k, "$") {
		return fmt.Errorf("property name %q starts with '$'", k)
	}
	for _, r := range k {
		if r == '.' || r == ' ' || unicode.IsControl(r) {
			return fmt.Errorf("property name %q contains '.', a space or a control character", k)
		}
	}
	return nil
}

// withoutMeta drops the "$version", "$metadata" and other '$' members that
// exported twins carry and hubs ignore on write. (azurehub.StripMeta does
// the same for the hub clients; the engine must not link them.)
func withoutMeta(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}
