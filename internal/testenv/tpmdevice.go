package testenv

import (
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/dpsd/dpsd/client/tpm"
)

// NewTPMDevice creates a provisioning device's keys in t (client/tpm).
func NewTPMDevice(tb testing.TB, t transport.TPM) *tpm.Device {
	tb.Helper()
	d, err := tpm.New(t)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}
