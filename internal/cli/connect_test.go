package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/server"
)

func TestResolve(t *testing.T) {
	const (
		localCS  = "HostName=localhost:8443;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=cA=="
		remoteCS = "HostName=my-dps.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=cw=="
	)
	dataDir := t.TempDir()
	if err := server.WriteInfo(dataDir, &admin.Info{
		ServiceConnectionString: localCS,
		CACertFile:              "/data/tls/ca.pem",
		HostName:                "localhost",
		HTTPSAddr:               "[::]:8443",
	}); err != nil {
		t.Fatal(err)
	}
	emptyDir := t.TempDir()
	tests := []struct {
		name    string
		flags   connectFlags
		env     map[string]string
		want    target
		wantErr string
	}{
		{
			name:  "data dir flag",
			flags: connectFlags{dataDir: dataDir},
			want:  target{connectionString: localCS, caFiles: []string{"/data/tls/ca.pem"}, dialAddr: "127.0.0.1:8443"},
		},
		{
			name: "data dir from env, extra CA",
			env:  map[string]string{envDataDir: dataDir}, flags: connectFlags{caFile: "/my/ca.pem"},
			want: target{connectionString: localCS, caFiles: []string{"/data/tls/ca.pem", "/my/ca.pem"}, dialAddr: "127.0.0.1:8443"},
		},
		{
			name:  "connection string flag alone",
			flags: connectFlags{connectionString: remoteCS},
			want:  target{connectionString: remoteCS},
		},
		{
			name: "connection string from env",
			env:  map[string]string{envConnectionString: remoteCS},
			want: target{connectionString: remoteCS},
		},
		{
			name:  "flag beats env",
			flags: connectFlags{connectionString: localCS},
			env:   map[string]string{envConnectionString: remoteCS},
			want:  target{connectionString: localCS},
		},
		{
			name:  "connection string for the local dpsd uses its data dir",
			flags: connectFlags{connectionString: localCS, dataDir: dataDir},
			want:  target{connectionString: localCS, caFiles: []string{"/data/tls/ca.pem"}, dialAddr: "127.0.0.1:8443"},
		},
		{
			name:  "connection string elsewhere ignores the data dir",
			flags: connectFlags{connectionString: remoteCS},
			env:   map[string]string{envDataDir: dataDir},
			want:  target{connectionString: remoteCS},
		},
		{
			name:  "env data dir without info is ignored next to a connection string",
			flags: connectFlags{connectionString: remoteCS},
			env:   map[string]string{envDataDir: emptyDir},
			want:  target{connectionString: remoteCS},
		},
		{
			name:    "explicit data dir without info",
			flags:   connectFlags{connectionString: remoteCS, dataDir: emptyDir},
			wantErr: "has \"dpsd serve",
		},
		{
			name:    "nothing at all",
			flags:   connectFlags{dataDir: emptyDir},
			wantErr: "give --connection-string",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envConnectionString, tt.env[envConnectionString])
			t.Setenv(envDataDir, tt.env[envDataDir])
			got, err := tt.flags.resolve()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("target = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestResolveDefaultDataDir checks that with no flags and no environment the
// client looks in ./dpsd-data, where "dpsd serve" keeps its data by default.
func TestResolveDefaultDataDir(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	t.Chdir(t.TempDir())
	_, err := (&connectFlags{}).resolve()
	if err == nil || !strings.Contains(err.Error(), defaultDataDir) {
		t.Fatalf("error = %v, want it to name %s", err, defaultDataDir)
	}
	if err := os.MkdirAll(defaultDataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := server.WriteInfo(defaultDataDir, &admin.Info{ServiceConnectionString: "HostName=h;SharedAccessKeyName=p;SharedAccessKey=cA==",
		CACertFile: filepath.Join("x", "ca.pem"), HTTPSAddr: "127.0.0.2:443"}); err != nil {
		t.Fatal(err)
	}
	got, err := (&connectFlags{}).resolve()
	if err != nil {
		t.Fatal(err)
	}
	if got.dialAddr != "127.0.0.2:443" {
		t.Errorf("dial address = %q", got.dialAddr)
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		"":               "",
		":443":           "127.0.0.1:443",
		"0.0.0.0:8443":   "127.0.0.1:8443",
		"[::]:8443":      "127.0.0.1:8443",
		"127.0.0.5:443":  "127.0.0.5:443",
		"[::1]:443":      "[::1]:443",
		"dpsd.local:443": "dpsd.local:443",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}
