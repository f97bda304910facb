package dps

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// ContentTypeJSON is the content type of every JSON answer. The Node SDKs
// parse a body only when the content type says JSON, and crash on an
// unparsed device-API answer, so it is never left out.
const ContentTypeJSON = "application/json; charset=utf-8"

// WriteJSON writes v as a JSON answer with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", ContentTypeJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	w.Write(data)
}

// WriteError writes err in Azure's error shape with the status its code
// implies, an x-ms-error-code header, and Retry-After when set.
func WriteError(w http.ResponseWriter, err error) {
	e := *AsError(err)
	if e.TrackingID == "" {
		e.TrackingID = NewTrackingID()
	}
	if e.TimestampUTC.IsZero() {
		e.TimestampUTC = time.Now().UTC()
	}
	w.Header().Set(HeaderErrorCode, strconv.Itoa(e.ErrorCode))
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", RetryAfterSeconds(e.RetryAfter))
	}
	data, _ := json.Marshal(&e)
	w.Header().Set("Content-Type", ContentTypeJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(e.Status())
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
	var e *Error
	if !errors.As(err, &e) {
		e = Errorf(CodeUnauthorized, "Unauthorized.")
	}
	WriteError(w, e)
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
