package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

// TestHealthzOnAFullDisk runs a node on a small file system of its own and
// fills it: the embedded store still answers reads, but no registration
// can be written, and /healthz must say so (503) until space comes back.
func TestHealthzOnAFullDisk(t *testing.T) {
	disk := testenv.SmallDisk(t, 16<<20)
	s := startLimitedServer(t, Config{DataDir: disk.Dir})
	info := s.Info()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(t, info)}}
	base := "https://" + info.HTTPSAddr
	cs, err := sas.ParseConnectionString(info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.New("dps.test", cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	enroll := func(id string) int {
		return do(http.MethodPut, "/enrollments/"+id+"?api-version=2021-10-01",
			fmt.Sprintf(`{"registrationId":%q,"attestation":{"type":"symmetricKey"}}`, id))
	}

	if code := enroll("before"); code != http.StatusOK {
		t.Fatalf("enrollment on a working disk: HTTP %d", code)
	}
	if code := do(http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Fatalf("/healthz on a working disk: HTTP %d", code)
	}

	disk.Fill(t)
	code := 0
	for i := 0; i < 50 && code != http.StatusServiceUnavailable; i++ {
		code = enroll(fmt.Sprint("full-", i))
	}
	if code != http.StatusServiceUnavailable {
		t.Fatalf("enrollments on a full disk: HTTP %d, want 503", code)
	}
	if code := do(http.MethodGet, "/enrollments/before?api-version=2021-10-01", ""); code != http.StatusOK {
		t.Fatalf("read on a full disk: HTTP %d (reads still work)", code)
	}
	if code := do(http.MethodGet, "/healthz", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz on a full disk: HTTP %d, want 503", code)
	}

	disk.Free(t)
	if code := enroll("after"); code != http.StatusOK {
		t.Fatalf("enrollment after space came back: HTTP %d", code)
	}
	if code := do(http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz after space came back: HTTP %d, want 200", code)
	}
}
