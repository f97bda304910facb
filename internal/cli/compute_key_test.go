package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runCLI runs the dpsd command line with args and returns what it printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	setArgs(root, args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// The test vectors of the reference walk-through (spec README, step 5).
const walkThroughGroupKey = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="

func TestComputeDeviceKey(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{
			name: "toaster",
			args: []string{"--key", walkThroughGroupKey, "--registration-id", "breakroom499-contoso-tstrsd-007"},
			want: "JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs=\n",
		},
		{
			name: "heat pump",
			args: []string{"--key", walkThroughGroupKey, "--registration-id", "mainbuilding167-contoso-hpsd-088"},
			want: "6uejA9PfkQgmYylj8Zerp3kcbeVrGZ172YLa7VSnJzg=\n",
		},
		{
			name: "json",
			args: []string{"--key", walkThroughGroupKey, "--registration-id", "breakroom499-contoso-tstrsd-007", "-o", "json"},
			want: "\"JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs=\"\n",
		},
		{name: "no key", args: []string{"--registration-id", "x"}, wantErr: "--key"},
		{name: "both", args: []string{"--key", "cA==", "--enrollment-group-id", "g", "--registration-id", "x"}, wantErr: "not both"},
		{name: "bad key", args: []string{"--key", "***", "--registration-id", "x"}, wantErr: "not base64"},
		{name: "no registration id", args: []string{"--key", "cA=="}, wantErr: "registration-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runCLI(t, append([]string{"compute-device-key"}, tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.want {
				t.Errorf("output = %q, want %q", out, tt.want)
			}
		})
	}
}
