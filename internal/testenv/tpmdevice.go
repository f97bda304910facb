package testenv

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TPMDevice is a TPM device's side of Azure's TPM attestation, done as the
// SDKs do it (Node azure-iot-security-tpm, C hsm_client_tpm): an EK and an
// SRK from the standard templates, and the activation of a blob.
type TPMDevice struct {
	t        transport.TPM
	ek, srk  *tpm2.CreatePrimaryResponse
	EK, SRK  []byte // TPM2B_PUBLIC, as sent to the service
	idHandle tpm2.TPMHandle
	idName   tpm2.TPM2BName
}

// NewTPMDevice creates the device's primary keys in tpm t.
func NewTPMDevice(tb testing.TB, t transport.TPM) *TPMDevice {
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
	return &TPMDevice{t: t, ek: ek, srk: srk, EK: tpm2.Marshal(ek.OutPublic), SRK: tpm2.Marshal(srk.OutPublic)}
}

// Activate imports the identity key of blob into the TPM as the SDKs do:
// ActivateCredential (the EK authorised by PolicySecret(endorsement)),
// Import under the SRK with the recovered inner key, Load.
func (d *TPMDevice) Activate(blob []byte) error {
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
	if d.idHandle != 0 {
		// The TPM holds three transient objects: make room for the new key.
		if _, err := (tpm2.FlushContext{FlushHandle: d.idHandle}).Execute(d.t); err != nil {
			return err
		}
		d.idHandle = 0
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
func (d *TPMDevice) Sign(data []byte) ([]byte, error) {
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

var errShort = errors.New("activation blob truncated")

// SRKName is the TPM's name of the storage root key.
func (d *TPMDevice) SRKName() []byte { return d.srk.Name.Buffer }
