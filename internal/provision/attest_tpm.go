package provision

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/tpm"
)

// TPMChallenge is the answer to a TPM device's register request without a
// proof: the activation blob (base64) the device's TPM turns into the
// identity key it then signs its SAS token with. HTTPS answers it as a 401
// whose body carries authenticationKey; AMQP as the SASL challenge.
type TPMChallenge struct {
	AuthenticationKey string
}

func (c *TPMChallenge) Error() string {
	return "TPM attestation: the device must activate the challenge and sign with the identity key"
}

// tpmChallenge answers a TPM device's request that carries its keys but no
// proof. Only an individual TPM enrollment with the same endorsement key
// gets a challenge; everything else is simply unauthorized, so an unknown
// device learns nothing.
func (e *Engine) tpmChallenge(ctx context.Context, req *Request) error {
	if len(e.opt.DeviceKeySecret) == 0 {
		return errUnauthorized("a TPM device, and this engine has no device key secret")
	}
	ie, err := enroll.GetEnrollment(ctx, e.st, req.RegistrationID)
	switch {
	case isNotFound(err):
		return errUnauthorized("a TPM device without an individual enrollment")
	case err != nil:
		return unavailable(err)
	}
	enrolledEK, ok := tpmEnrollmentEK(ie)
	if !ok {
		return errUnauthorized("a TPM device whose enrollment is not a TPM enrollment")
	}
	sentEK, err := decodePublic(req.TPM.EndorsementKey)
	if err != nil || !hmac.Equal(sentEK, enrolledEK) {
		return errUnauthorized("the TPM's endorsement key is not the enrolled one")
	}
	blob, err := e.tpmActivation(req, ie, enrolledEK)
	if err != nil {
		return err
	}
	return &TPMChallenge{AuthenticationKey: blob}
}

// tpmActivation builds the activation blob of the device's identity key,
// for the storage root key the device sent (or, without one, the
// enrollment's).
func (e *Engine) tpmActivation(req *Request, ie *dps.IndividualEnrollment, ekArea []byte) (string, error) {
	srkB64 := ""
	if req.TPM != nil {
		srkB64 = req.TPM.StorageRootKey
	}
	if srkB64 == "" {
		srkB64 = ie.Attestation.TPM.StorageRootKey
	}
	if srkB64 == "" {
		return "", dps.Errorf(dps.CodeBadRequest, "A TPM registration needs the device's storageRootKey.")
	}
	srkArea, err := decodePublic(srkB64)
	if err != nil {
		return "", dps.Errorf(dps.CodeBadRequest, "The TPM storageRootKey is not valid base64.")
	}
	ek, err := tpm.ParseStorageKey(ekArea)
	if err != nil {
		return "", dps.Errorf(dps.CodeBadRequest, "The enrolled TPM endorsementKey cannot be used: %v", err)
	}
	srk, err := tpm.ParseStorageKey(srkArea)
	if err != nil {
		return "", dps.Errorf(dps.CodeBadRequest, "The TPM storageRootKey cannot be used: %v", err)
	}
	blob, err := tpm.Activation(ek, srk, e.tpmKey(ie.RegistrationID, ekArea))
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(blob), nil
}

// tpmKey is the identity key of a TPM device: the key of its proof and of
// its hub identity.
func (e *Engine) tpmKey(regID string, ekArea []byte) []byte {
	return tpm.IdentityKey(e.opt.DeviceKeySecret, regID, ekArea)
}

// verifyTPM checks a TPM device's SAS token, signed by its TPM with the
// identity key that the activation blob carried.
func (e *Engine) verifyTPM(req *Request, tok *sas.Token, ie *dps.IndividualEnrollment) (*vouched, error) {
	ekArea, ok := tpmEnrollmentEK(ie)
	if !ok || len(e.opt.DeviceKeySecret) == 0 {
		return nil, errUnauthorized("a TPM enrollment, and this engine has no device key secret")
	}
	if req.TPM != nil && req.TPM.EndorsementKey != "" {
		if sent, err := decodePublic(req.TPM.EndorsementKey); err != nil || !hmac.Equal(sent, ekArea) {
			return nil, errUnauthorized("the TPM's endorsement key is not the enrolled one")
		}
	}
	key := e.tpmKey(ie.RegistrationID, ekArea)
	if tok.VerifyAny(key, nil) < 0 {
		return nil, errUnauthorized("the SAS token is not signed with the TPM's identity key")
	}
	v := &vouched{
		enrollment:   ie,
		disabled:     strings.EqualFold(ie.ProvisioningStatus, dps.ProvisioningDisabled),
		primaryKey:   base64.StdEncoding.EncodeToString(key),
		secondaryKey: base64.StdEncoding.EncodeToString(secondaryTPMKey(key)),
		tpm:          true,
	}
	if req.TPM != nil && !v.disabled {
		// The final answer carries the blob again: the SDKs activate it
		// once more when they store the result (Node's storingSecret, the
		// C SDK's import of the key for the hub).
		blob, err := e.tpmActivation(req, ie, ekArea)
		if err != nil {
			return nil, err
		}
		v.tpmBlob = blob
	}
	return v, nil
}

// secondaryTPMKey is the secondary symmetric key of a TPM device's hub
// identity: hubs want two keys, and the TPM holds one. Derived from the
// identity key, so it is stable across registrations and known to nobody
// but dpsd.
func secondaryTPMKey(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("dpsd tpm secondary key"))
	return m.Sum(nil)
}

// tpmEnrollmentEK is the endorsement key's public area of a TPM
// enrollment.
func tpmEnrollmentEK(ie *dps.IndividualEnrollment) ([]byte, bool) {
	a := ie.Attestation
	if a == nil || !strings.EqualFold(a.Type, dps.AttestationTPM) || a.TPM == nil {
		return nil, false
	}
	ek, err := decodePublic(a.TPM.EndorsementKey)
	return ek, err == nil
}

// decodePublic decodes a base64 TPM public area and drops its TPM2B size
// when present, so that a key enrolled as a TPM2B_PUBLIC (what the SDKs
// and tpm2-tools print) and one enrolled as a bare TPMT_PUBLIC compare
// equal.
func decodePublic(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r':
			return -1
		}
		return r
	}, s)
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, errors.New("empty key")
	}
	if len(b) >= 2 && int(b[0])<<8|int(b[1]) == len(b)-2 {
		b = b[2:]
	}
	return b, nil
}
