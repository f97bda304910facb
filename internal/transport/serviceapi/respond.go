package serviceapi

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// writeJSON answers status with v as JSON.
func (h *handler) writeJSON(req *request, status int, v any) {
	httperr.WriteJSON(req.w, status, v)
}

// writeError answers with Azure's error body and the request's tracking id
// (see httperr.Write).
func (h *handler) writeError(req *request, err error) {
	e := httperr.Answer(req.r, h.log, err, req.trackingID)
	e.TimestampUTC = h.now().UTC()
	httperr.Write(req.w, req.r, h.log, e)
}

// readBody reads the request body, at most MaxBodyBytes (413 beyond).
// Body-less requests (the SDKs' attestation lookups send Content-Length: 0
// and no Content-Type) yield an empty slice. The Content-Type header is not
// checked: clients differ and some send none.
func readBody(req *request) ([]byte, error) {
	if req.r.ContentLength > MaxBodyBytes {
		return nil, tooLarge()
	}
	data, err := io.ReadAll(http.MaxBytesReader(req.w, req.r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge()
		}
		return nil, dps.Errorf(dps.CodeBadRequest, "The request body could not be read.")
	}
	return data, nil
}

func tooLarge() error {
	return dps.Errorf(dps.CodeRequestEntityTooLarge, "The request body is larger than %d bytes.", MaxBodyBytes)
}

// knownAPIVersions are the api-version values the SDKs and docs use.
var knownAPIVersions = map[string]bool{
	"2017-11-15": true, "2018-04-01": true, "2018-09-01-preview": true, "2019-03-31": true,
	"2021-06-01": true, "2021-10-01": true, "2021-11-01-preview": true, "2025-07-01-preview": true,
}

// oldestAPIVersion is the first service API version; any well-formed date
// after it (with or without "-preview") is accepted, so newer SDKs keep
// working without a dpsd release. The 2021-10-01 shapes are served to all.
var oldestAPIVersion = time.Date(2017, 11, 15, 0, 0, 0, 0, time.UTC)

// checkAPIVersion requires the api-version query parameter. The error is
// dpsd's usual DPS error body (400000) rather than the IoT Hub gateway's
// {"Message":...} shape, because the C# v2 client needs an int errorCode.
func checkAPIVersion(r *http.Request) error {
	var v string
	found := false
	for k, vs := range r.URL.Query() {
		if strings.EqualFold(k, "api-version") && len(vs) > 0 {
			v, found = vs[0], true
		}
	}
	switch {
	case !found || v == "":
		return dps.Errorf(dps.CodeBadRequest, "The api-version query parameter is required (for example api-version=2021-10-01).")
	case !validAPIVersion(v):
		return dps.Errorf(dps.CodeBadRequest, "Unknown api-version %q; use a version such as 2021-10-01.", v)
	}
	return nil
}

func validAPIVersion(v string) bool {
	if knownAPIVersions[strings.ToLower(v)] {
		return true
	}
	date, preview := v, false
	if len(v) > len("2006-01-02") {
		date = v[:len("2006-01-02")]
		preview = strings.EqualFold(v[len(date):], "-preview")
		if !preview {
			return false
		}
	}
	t, err := time.Parse("2006-01-02", date)
	return err == nil && !t.Before(oldestAPIVersion)
}
