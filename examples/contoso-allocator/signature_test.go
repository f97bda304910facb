package main

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/webhooksig"
)

// TestVerifySignature checks this written-out verification against dpsd's
// own signing (package webhooksig): they must agree, or the example would
// teach a check that refuses dpsd.
func TestVerifySignature(t *testing.T) {
	secret, other := webhooksig.NewSecret(), webhooksig.NewSecret()
	body := []byte(`{"deviceRuntimeContext":{"registrationId":"breakroom499-contoso-tstrsd-007"},"linkedHubs":["` + toasters + `"]}`)
	now := time.Now()
	headers := func(secrets []string, ts time.Time, b []byte) http.Header {
		sig, err := webhooksig.Signature(secrets, "msg_1", ts, b)
		if err != nil {
			t.Fatal(err)
		}
		return http.Header{"Webhook-Id": {"msg_1"}, "Webhook-Timestamp": {strconv.FormatInt(ts.Unix(), 10)}, "Webhook-Signature": {sig}}
	}
	tests := []struct {
		name string
		h    http.Header
		body []byte
		ok   bool
	}{
		{"signed", headers([]string{secret}, now, body), body, true},
		{"rotation: new and old", headers([]string{other, secret}, now, body), body, true},
		{"other secret", headers([]string{other}, now, body), body, false},
		{"body changed", headers([]string{secret}, now, body), append(bytes.Clone(body), ' '), false},
		{"replayed an hour later", headers([]string{secret}, now.Add(-time.Hour), body), body, false},
		{"unsigned", http.Header{}, body, false},
	}
	for _, tt := range tests {
		if err := verifySignature(secret, tt.h, tt.body, now); (err == nil) != tt.ok {
			t.Errorf("%s: %v; want ok %v", tt.name, err, tt.ok)
		}
	}

	// Through HTTP: 401 without a valid signature.
	srv := httptest.NewServer(&allocator{log: slog.New(slog.DiscardHandler), secrets: []string{secret}})
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		h    http.Header
		want int
	}{{headers([]string{secret}, now, body), 200}, {headers([]string{other}, now, body), 401}, {http.Header{}, 401}} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/allocate", bytes.NewReader(body))
		for k, v := range tt.h {
			req.Header[k] = v
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.want {
			t.Errorf("headers %v: status %d; want %d", tt.h, res.StatusCode, tt.want)
		}
	}
}
