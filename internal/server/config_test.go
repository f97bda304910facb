package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := Config{DataDir: "d", HTTPSAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0"}
	tests := []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error; none for a valid config
	}{
		{"valid", func(*Config) {}, nil},
		{"postgres", func(c *Config) { c.Store = "postgres://u:secret@127.0.0.1/db" }, nil},
		{"geo networks", func(c *Config) { c.AllocationPolicy = "geoLatency"; c.GeoNetworks = "10.1.0.0/16=westeurope" }, nil},
		{"no data dir", func(c *Config) { c.DataDir = "" }, []string{"--data-dir"}},
		{"bad address", func(c *Config) { c.HTTPSAddr = "443" }, []string{"--https-addr"}},
		{"bad debug address", func(c *Config) { c.DebugAddr = "localhost" }, []string{"--debug-addr"}},
		{"half a certificate", func(c *Config) { c.TLSCertFile = "cert.pem" }, []string{"--tls-cert and --tls-key"}},
		{"unknown store", func(c *Config) { c.Store = "mysql://u:secret@h/db" }, []string{"--store", "u:****@h"}},
		{"unknown policy", func(c *Config) { c.AllocationPolicy = "random" }, []string{"--allocation-policy"}},
		{"bad network map", func(c *Config) { c.GeoNetworks = "not a map" }, []string{"--geo-networks"}},
		{"webhook allow list", func(c *Config) { c.WebhookTargets = "10.1.0.0/16,hooks.example.com" }, nil},
		{"bad webhook targets", func(c *Config) { c.WebhookTargets = "10.0.0.0/33" }, []string{"--webhook-targets"}},
		{"every mistake at once", func(c *Config) { c.DataDir = ""; c.MQTTAddr = "x"; c.AllocationPolicy = "random" },
			[]string{"--data-dir", "--mqtt-addr", "--allocation-policy"}},
	}
	for _, tc := range tests {
		cfg := ok
		tc.mod(&cfg)
		err := cfg.Validate()
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != nil && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case err != nil:
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %q does not say %q", tc.name, err, w)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: %q shows the password", tc.name, err)
			}
		}
		if cfg.Logger == nil || cfg.HostName != "localhost" {
			t.Errorf("%s: defaults not filled in: %+v", tc.name, cfg)
		}
	}
}

// TestInvalidConfigOpensNothing checks that Start refuses a bad
// configuration before it creates the data directory.
func TestInvalidConfigOpensNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, err := Start(t.Context(), Config{DataDir: dir, HTTPSAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", AllocationPolicy: "random"})
	if err == nil {
		t.Fatal("Start accepted an unknown allocation policy")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the data directory exists after a refused start: %v", err)
	}
}
