package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
)

// writeTestCert writes a self-signed certificate as PEM and as DER and
// returns both paths and the PEM text the CLI is expected to send.
func writeTestCert(t *testing.T) (pemPath, derPath, pemText string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test-device"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(0, 0).Add(100 * 365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pemText = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	pemPath = filepath.Join(dir, "cert.pem")
	derPath = filepath.Join(dir, "cert.cer")
	if err := os.WriteFile(pemPath, []byte(pemText), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(derPath, der, 0o600); err != nil {
		t.Fatal(err)
	}
	return pemPath, derPath, pemText
}

// applyFlags parses args as the flags of a create/update command and applies
// them to a copy of start (an *dps.IndividualEnrollment or *dps.EnrollmentGroup).
func applyFlags(t *testing.T, group bool, start string, args []string) (string, error) {
	t.Helper()
	cmd := &cobra.Command{Use: "test"}
	ef := addEnrollmentFlags(cmd, group, false)
	if err := cmd.ParseFlags(args); err != nil {
		return "", err
	}
	var v any
	if group {
		g := &dps.EnrollmentGroup{}
		if err := json.Unmarshal([]byte(start), g); err != nil {
			t.Fatal(err)
		}
		if err := ef.applyGroup(g); err != nil {
			return "", err
		}
		v = g
	} else {
		e := &dps.IndividualEnrollment{}
		if err := json.Unmarshal([]byte(start), e); err != nil {
			t.Fatal(err)
		}
		if err := ef.applyEnrollment(e); err != nil {
			return "", err
		}
		v = e
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), nil
}

func TestEnrollmentFlags(t *testing.T) {
	pemPath, derPath, pemText := writeTestCert(t)
	certJSON, _ := json.Marshal(pemText)
	const (
		newEnr   = `{"registrationId":"r"}`
		newGroup = `{"enrollmentGroupId":"g"}`
		// storedEnr is an enrollment as update sees it: GET plus the keys
		// from the attestation lookup.
		storedEnr = `{"registrationId":"r","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cA==","secondaryKey":"cw=="}},` +
			`"etag":"\"e1\"","provisioningStatus":"enabled","allocationPolicy":"custom","iotHubs":["h1"],` +
			`"customAllocationDefinition":{"webhookUrl":"https://w/a","apiVersion":"2019-03-31"},` +
			`"initialTwin":{"tags":{"t":1},"properties":{"desired":{"d":2}}}}`
	)
	tests := []struct {
		name    string
		group   bool
		start   string
		args    []string
		want    string // JSON; $CERT stands for the certificate's JSON string
		wantErr string
	}{
		{
			name: "create defaults to symmetric key with generated keys", start: newEnr,
			want: `{"registrationId":"r","attestation":{"type":"symmetricKey"}}`,
		},
		{
			name: "create with keys", start: newEnr,
			args: []string{"--attestation-type", "SymmetricKey", "--primary-key", "cA==", "--secondary-key", "cw=="},
			want: `{"registrationId":"r","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cA==","secondaryKey":"cw=="}}}`,
		},
		{
			name: "create with every setting", start: newEnr,
			args: []string{
				"--device-id", "dev", "--iot-hubs", "h1.example, h2.example", "--allocation-policy", "geolatency",
				"--initial-twin-tags", `{"deviceType": "toaster"}`, "--initial-twin-properties", `{"state":"ready"}`,
				"--provisioning-status", "Disabled", "--reprovision-policy", "reprovisionandresetdata",
				"--edge-enabled", "--device-information", `{"model":"T1"}`,
			},
			want: `{"registrationId":"r","deviceId":"dev","optionalDeviceInformation":{"model":"T1"},"attestation":{"type":"symmetricKey"},` +
				`"capabilities":{"iotEdge":true},"initialTwin":{"tags":{"deviceType":"toaster"},"properties":{"desired":{"state":"ready"}}},` +
				`"provisioningStatus":"disabled","reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":false},` +
				`"allocationPolicy":"geoLatency","iotHubs":["h1.example","h2.example"]}`,
		},
		{
			name: "custom allocation gets a default api version", group: true, start: newGroup,
			args: []string{"--allocation-policy", "custom", "--webhook-url", "https://alloc.example/api?code=x", "--iot-hubs", "a,b"},
			want: `{"enrollmentGroupId":"g","attestation":{"type":"symmetricKey"},"allocationPolicy":"custom","iotHubs":["a","b"],` +
				`"customAllocationDefinition":{"webhookUrl":"https://alloc.example/api?code=x","apiVersion":"2021-10-01"}}`,
		},
		{
			name: "legacy hub host name becomes static allocation", start: newEnr,
			args: []string{"--iot-hub-host-name", "hub.example", "--reprovision-policy", "never"},
			want: `{"registrationId":"r","attestation":{"type":"symmetricKey"},"reprovisionPolicy":{"updateHubAssignment":false,"migrateDeviceData":false},` +
				`"allocationPolicy":"static","iotHubs":["hub.example"]}`,
		},
		{
			name: "x509 individual from PEM", start: newEnr,
			args: []string{"--attestation-type", "x509", "--certificate-path", pemPath},
			want: `{"registrationId":"r","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":$CERT}}}}}`,
		},
		{
			name: "x509 group from DER with secondary", group: true, start: newGroup,
			args: []string{"--attestation-type", "x509", "--certificate-path", derPath, "--secondary-certificate-path", pemPath},
			want: `{"enrollmentGroupId":"g","attestation":{"type":"x509","x509":{"signingCertificates":{"primary":{"certificate":$CERT},"secondary":{"certificate":$CERT}}}}}`,
		},
		{
			name: "x509 group by CA name", group: true, start: newGroup,
			args: []string{"--attestation-type", "x509", "--ca-name", "my-root"},
			want: `{"enrollmentGroupId":"g","attestation":{"type":"x509","x509":{"caReferences":{"primary":"my-root"}}}}`,
		},
		{
			name: "tpm", start: newEnr,
			args: []string{"--attestation-type", "tpm", "--endorsement-key", "AToAAQ"},
			want: `{"registrationId":"r","attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQ"}}}`,
		},
		{
			name: "update keeps keys and everything not named", start: storedEnr,
			args: []string{"--provisioning-status", "disabled"},
			want: strings.Replace(storedEnr, `"provisioningStatus":"enabled"`, `"provisioningStatus":"disabled"`, 1),
		},
		{
			name: "update one key", start: storedEnr,
			args: []string{"--primary-key", "bmV3"},
			want: strings.Replace(storedEnr, `"primaryKey":"cA=="`, `"primaryKey":"bmV3"`, 1),
		},
		{
			name: "update webhook keeps its api version", start: storedEnr,
			args: []string{"--webhook-url", "https://w/b"},
			want: strings.Replace(storedEnr, `https://w/a`, `https://w/b`, 1),
		},
		{
			name: "update desired keeps tags", start: storedEnr,
			args: []string{"--initial-twin-properties", `{"x":true}`},
			want: strings.Replace(storedEnr, `{"d":2}`, `{"x":true}`, 1),
		},
		{
			name: "leaving custom drops the webhook", start: storedEnr,
			args: []string{"--allocation-policy", "hashed"},
			want: `{"registrationId":"r","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cA==","secondaryKey":"cw=="}},` +
				`"initialTwin":{"tags":{"t":1},"properties":{"desired":{"d":2}}},"etag":"\"e1\"","provisioningStatus":"enabled",` +
				`"allocationPolicy":"hashed","iotHubs":["h1"]}`,
		},
		{
			name: "switching to x509 drops the keys", start: storedEnr,
			args: []string{"--attestation-type", "x509", "--ca-name", "ca1", "--iot-hubs", ""},
			want: `{"registrationId":"r","attestation":{"type":"x509","x509":{"caReferences":{"primary":"ca1"}}},` +
				`"initialTwin":{"tags":{"t":1},"properties":{"desired":{"d":2}}},"etag":"\"e1\"","provisioningStatus":"enabled",` +
				`"allocationPolicy":"custom","customAllocationDefinition":{"webhookUrl":"https://w/a","apiVersion":"2019-03-31"}}`,
		},
		{name: "custom needs a webhook", start: newEnr, args: []string{"--allocation-policy", "custom"}, wantErr: "needs --webhook-url"},
		{name: "webhook needs custom", start: newEnr, args: []string{"--webhook-url", "https://w"}, wantErr: "need --allocation-policy custom"},
		{name: "unknown policy", start: newEnr, args: []string{"--allocation-policy", "random"}, wantErr: `--allocation-policy "random"`},
		{name: "unknown status", start: newEnr, args: []string{"--provisioning-status", "on"}, wantErr: "--provisioning-status"},
		{name: "unknown reprovision policy", start: newEnr, args: []string{"--reprovision-policy", "always"}, wantErr: "--reprovision-policy"},
		{name: "tags must be an object", start: newEnr, args: []string{"--initial-twin-tags", `[1]`}, wantErr: "must be a JSON object"},
		{name: "tags must be JSON", start: newEnr, args: []string{"--initial-twin-tags", `{a:1}`}, wantErr: "must be a JSON object"},
		{name: "key must be base64", start: newEnr, args: []string{"--primary-key", "not base64!"}, wantErr: "not base64"},
		{name: "keys need symmetric key", start: newEnr, args: []string{"--attestation-type", "x509", "--primary-key", "cA==", "--ca-name", "c"}, wantErr: "need --attestation-type symmetrickey"},
		{name: "certificates need x509", start: newEnr, args: []string{"--certificate-path", pemPath}, wantErr: "need --attestation-type x509"},
		{name: "x509 needs a certificate", start: newEnr, args: []string{"--attestation-type", "x509"}, wantErr: "needs --certificate-path or --ca-name"},
		{name: "certificate or CA, not both", start: newEnr, args: []string{"--attestation-type", "x509", "--certificate-path", pemPath, "--ca-name", "c"}, wantErr: "not both"},
		{name: "not a certificate", start: newEnr, args: []string{"--attestation-type", "x509", "--certificate-path", os.DevNull}, wantErr: "not a certificate"},
		{name: "groups have no tpm", group: true, start: newGroup, args: []string{"--attestation-type", "tpm"}, wantErr: "want one of symmetrickey, x509"},
		{name: "groups have no device id", group: true, start: newGroup, args: []string{"--device-id", "d"}, wantErr: "unknown flag"},
		{name: "tpm needs a key", start: newEnr, args: []string{"--attestation-type", "tpm"}, wantErr: "--endorsement-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := applyFlags(t, tt.group, tt.start, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(tt.want, "$CERT", string(certJSON))
			if !jsonEqual(t, got, want) {
				t.Errorf("got  %s\nwant %s", got, want)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal([]byte(a), &va); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &vb); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func TestCollect(t *testing.T) {
	// pages serves items 0..n-1 in pages of the requested size (default 3);
	// the continuation token is the next index.
	pages := func(n int, calls *[]service.QueryOptions) func(context.Context, service.QueryOptions) (*service.Page[int], error) {
		return func(_ context.Context, o service.QueryOptions) (*service.Page[int], error) {
			*calls = append(*calls, o)
			if len(*calls) > 100 {
				return nil, errors.New("too many calls")
			}
			start := 0
			if o.Continuation != "" {
				start, _ = strconv.Atoi(o.Continuation)
			}
			size := o.PageSize
			if size == 0 {
				size = 3
			}
			p := &service.Page[int]{}
			for i := start; i < min(start+size, n); i++ {
				p.Items = append(p.Items, i)
			}
			if start+size < n {
				p.Continuation = strconv.Itoa(start + size)
			}
			return p, nil
		}
	}
	tests := []struct {
		name      string
		n, top    int
		wantLen   int
		wantCalls int
	}{
		{name: "empty", n: 0, wantLen: 0, wantCalls: 1},
		{name: "all pages", n: 7, wantLen: 7, wantCalls: 3},
		{name: "top within a page", n: 7, top: 2, wantLen: 2, wantCalls: 1},
		{name: "top larger than all", n: 4, top: 10, wantLen: 4, wantCalls: 1},
		{name: "top beyond max page size", n: 250, top: 201, wantLen: 201, wantCalls: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls []service.QueryOptions
			got, err := collect(context.Background(), tt.top, pages(tt.n, &calls))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.wantLen || len(calls) != tt.wantCalls {
				t.Errorf("got %d items in %d calls, want %d in %d", len(got), len(calls), tt.wantLen, tt.wantCalls)
			}
			for i, v := range got {
				if v != i {
					t.Fatalf("item %d = %d", i, v)
				}
			}
			for _, c := range calls {
				if c.PageSize > maxPageSize {
					t.Errorf("page size %d > %d", c.PageSize, maxPageSize)
				}
			}
		})
	}
	t.Run("repeated token", func(t *testing.T) {
		n := 0
		_, err := collect(context.Background(), 0, func(context.Context, service.QueryOptions) (*service.Page[int], error) {
			n++
			if n > 10 {
				t.Fatal("collect did not stop")
			}
			return &service.Page[int]{Items: []int{1}, Continuation: "same"}, nil
		})
		if err == nil || !strings.Contains(err.Error(), "repeated continuation token") {
			t.Fatalf("error = %v", err)
		}
	})
}
