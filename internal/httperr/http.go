package httperr

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/dpsd/dpsd/api/dps"
)

// ContentTypeJSON is the content type of every JSON answer. The Node SDKs
// parse a body only when the content type says JSON, and crash on an
// unparsed device-API answer, so it is never left out.
const ContentTypeJSON = "application/json; charset=utf-8"

// WriteJSON writes v as a JSON answer with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		Write(w, nil, nil, err)
		return
	}
	w.Header().Set("Content-Type", ContentTypeJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	w.Write(data)
}

// Authorized runs authorize on r, when authorize is not nil, and reports
// whether r may go on. When it may not, the refusal is already written:
// authorize's *Error as it is, any other error as 401000 without its text,
// which is not meant for the caller.
func Authorized(w http.ResponseWriter, r *http.Request, authorize func(*http.Request) error) bool {
	if authorize == nil {
		return true
	}
	err := authorize(r)
	if err == nil {
		return true
	}
	var e *dps.Error
	if !errors.As(err, &e) {
		e = dps.New(dps.CodeUnauthorized)
	}
	Write(w, r, nil, e)
	return false
}

// RetryAfterSeconds renders d as whole seconds, rounded up, for a
// Retry-After header or an MQTT retry-after parameter.
func RetryAfterSeconds(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(d.Seconds())))
}

// NewTrackingID returns a random (version 4) UUID that ties an error to its
// log line.
func NewTrackingID() string { return uuid.NewString() }

// DecodeBody reads a JSON request body of at most max bytes into v. A
// Content-Type other than JSON is 415, a larger body 413, and a body that
// does not decode 400004 saying it is not what (e.g. "valid JSON"). strict
// refuses members v does not have.
func DecodeBody(r *http.Request, v any, max int64, strict bool, what string) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return dps.Errorf(dps.CodeUnsupportedMediaType, "The request body must be application/json.")
		}
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return dps.Errorf(dps.CodeBadRequest, "Reading the request body failed.")
	}
	if int64(len(data)) > max {
		return dps.Errorf(dps.CodeRequestEntityTooLarge, "The request body is larger than %d bytes.", max)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return dps.Errorf(dps.CodeInvalidArgument, "The request body is not %s: %v", what, err)
	}
	return nil
}
