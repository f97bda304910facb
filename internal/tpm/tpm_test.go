package tpm_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"github.com/dpsd/dpsd/internal/testenv"
	"github.com/dpsd/dpsd/internal/tpm"
)

func TestMain(m *testing.M) { testenv.Main(m, "tpm") }

// TestActivationWithSWTPM has a software TPM import the identity key from
// the activation blob and sign with it: the signature must be the HMAC
// the service computes with the key it derived.
func TestActivationWithSWTPM(t *testing.T) {
	sw := testenv.StartSWTPM(t)
	conn, err := sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dev := testenv.NewTPMDevice(t, conn)

	ek, err := tpm.ParseStorageKey(dev.EK)
	if err != nil {
		t.Fatalf("parse EK: %v", err)
	}
	srk, err := tpm.ParseStorageKey(dev.SRK)
	if err != nil {
		t.Fatalf("parse SRK: %v", err)
	}
	if !bytes.Equal(srk.Name(), dev.SRKName()) {
		t.Fatalf("SRK name %x, TPM says %x", srk.Name(), dev.SRKName())
	}
	key := tpm.IdentityKey([]byte("instance secret"), "tpm-device-1", dev.EK)
	blob, err := tpm.Activation(ek, srk, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Activate(blob); err != nil {
		t.Fatalf("activate: %v", err)
	}
	msg := []byte("0ne00000000/registrations/tpm-device-1\n1700000000")
	got, err := dev.Sign(msg)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if !hmac.Equal(got, m.Sum(nil)) {
		t.Fatalf("TPM signature %x does not match the identity key's HMAC", got)
	}

	// A blob made for another TPM's EK does not activate here.
	other := testenv.StartSWTPM(t)
	oc, err := other.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	od := testenv.NewTPMDevice(t, oc)
	oek, err := tpm.ParseStorageKey(od.EK)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tpm.Activation(oek, srk, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Activate(foreign); err == nil {
		t.Fatal("a blob for another endorsement key activated")
	}
}
