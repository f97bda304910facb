package enroll

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/jsonlimit"
)

// MaxJSONDepth is the deepest nesting of objects and arrays a request body
// may have: the one limit of every JSON body dpsd accepts.
const MaxJSONDepth = jsonlimit.MaxDepth

// DecodeJSON decodes a request body into v. Unknown members are ignored, as
// Azure ignores them. Every failure — an empty body, bad JSON, a member of
// the wrong type, nesting deeper than MaxJSONDepth — is a *dps.Error with
// code 400004 whose message says what is wrong, never a 500.
func DecodeJSON(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return dps.Errorf(dps.CodeInvalidArgument, "The request body is empty.")
	}
	if jsonlimit.Check(data) != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "The request body nests objects and arrays deeper than %d levels.", MaxJSONDepth)
	}
	if err := json.Unmarshal(data, v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typ) && typ.Field != "":
			return dps.Errorf(dps.CodeInvalidArgument, "The request body member %q must be %s, not %s.", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
		case errors.As(err, &typ):
			return dps.Errorf(dps.CodeInvalidArgument, "The request body must be %s, not %s.", jsonKind(typ.Type.Kind().String()), typ.Value)
		case errors.As(err, &syn):
			return dps.Errorf(dps.CodeInvalidArgument, "The request body is not valid JSON (offset %d): %v.", syn.Offset, err)
		default:
			return dps.Errorf(dps.CodeInvalidArgument, "The request body cannot be read: %v.", err)
		}
	}
	return nil
}

// jsonKind names a Go kind the way a JSON author thinks of it.
func jsonKind(k string) string {
	switch k {
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "a number"
	}
	return "a " + k
}

// DecodeEnrollment decodes an IndividualEnrollment request body. It does not
// validate it; PutEnrollment and ValidateEnrollment do.
func DecodeEnrollment(data []byte) (*dps.IndividualEnrollment, error) {
	var e dps.IndividualEnrollment
	if err := DecodeJSON(data, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// DecodeGroup decodes an EnrollmentGroup request body without validating it.
func DecodeGroup(data []byte) (*dps.EnrollmentGroup, error) {
	var g dps.EnrollmentGroup
	if err := DecodeJSON(data, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// clone deep-copies a wire document through JSON, so preparing a copy never
// touches the caller's value (a retried write starts from the original).
func clone[T any](v *T) (*T, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("copy document: %w", err)
	}
	var c T
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("copy document: %w", err)
	}
	return &c, nil
}
