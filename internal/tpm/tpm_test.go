package tpm_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/dpsd/dpsd/internal/testenv"
	"github.com/dpsd/dpsd/internal/tpm"
)

// Device is a TPM device's side of Azure's TPM attestation, done as the
// SDKs do it (Node azure-iot-security-tpm, C hsm_client_tpm): an EK and an
// SRK from the standard templates, and the activation of a blob.
type Device struct {
	t        transport.TPM
	ek, srk  *tpm2.CreatePrimaryResponse
	EK, SRK  []byte // TPM2B_PUBLIC, as sent to the service
	idHandle tpm2.TPMHandle
	idName   tpm2.TPM2BName
}

// NewDevice creates the device's primary keys in tpm t.
func NewDevice(tb testing.TB, t transport.TPM) *Device {
	tb.Helper()
	ek, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(t)
	if err != nil {
		tb.Fatalf("create EK: %v", err)
	}
	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
	}.Execute(t)
	if err != nil {
		tb.Fatalf("create SRK: %v", err)
	}
	return &Device{t: t, ek: ek, srk: srk, EK: tpm2.Marshal(ek.OutPublic), SRK: tpm2.Marshal(srk.OutPublic)}
}

// Activate imports the identity key of blob into the TPM as the SDKs do:
// ActivateCredential (the EK authorised by PolicySecret(endorsement)),
// Import under the SRK with the recovered inner key, Load.
func (d *Device) Activate(blob []byte) error {
	parts, err := split(blob, 6)
	if err != nil {
		return err
	}
	cred, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle: tpm2.AuthHandle{Handle: d.ek.ObjectHandle, Name: d.ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16,
			func(t transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicySecret{
					AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
					PolicySession: h,
					NonceTPM:      nonce,
				}.Execute(t)
				return err
			})},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: parts[0]},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: parts[1]},
	}.Execute(d.t)
	if err != nil {
		return err
	}
	pub := tpm2.BytesAs2B[tpm2.TPMTPublic](parts[4])
	imp, err := tpm2.Import{
		ParentHandle:  tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		EncryptionKey: tpm2.TPM2BData{Buffer: cred.CertInfo.Buffer},
		ObjectPublic:  pub,
		Duplicate:     tpm2.TPM2BPrivate{Buffer: parts[2]},
		InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: parts[3]},
		Symmetric: tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(len(cred.CertInfo.Buffer)*8)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
	}.Execute(d.t)
	if err != nil {
		return err
	}
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: d.srk.ObjectHandle, Name: d.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    imp.OutPrivate,
		InPublic:     pub,
	}.Execute(d.t)
	if err != nil {
		return err
	}
	d.idHandle, d.idName = ld.ObjectHandle, ld.Name
	return nil
}

// Sign is the TPM's HMAC with the identity key.
func (d *Device) Sign(data []byte) ([]byte, error) {
	rsp, err := tpm2.Hmac{
		Handle:  tpm2.AuthHandle{Handle: d.idHandle, Name: d.idName, Auth: tpm2.PasswordAuth(nil)},
		Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
		HashAlg: tpm2.TPMAlgSHA256,
	}.Execute(d.t)
	if err != nil {
		return nil, err
	}
	return rsp.OutHMAC.Buffer, nil
}

func split(b []byte, n int) ([][]byte, error) {
	var out [][]byte
	for range n {
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			return nil, errShort
		}
		l := int(binary.BigEndian.Uint16(b))
		out = append(out, b[2:2+l])
		b = b[2+l:]
	}
	return out, nil
}

type shortErr struct{}

func (shortErr) Error() string { return "activation blob truncated" }

var errShort error = shortErr{}

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
	dev := NewDevice(t, conn)

	ek, err := tpm.ParseStorageKey(dev.EK)
	if err != nil {
		t.Fatalf("parse EK: %v", err)
	}
	srk, err := tpm.ParseStorageKey(dev.SRK)
	if err != nil {
		t.Fatalf("parse SRK: %v", err)
	}
	if !bytes.Equal(srk.Name(), dev.srk.Name.Buffer) {
		t.Fatalf("SRK name %x, TPM says %x", srk.Name(), dev.srk.Name.Buffer)
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
	od := NewDevice(t, oc)
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
