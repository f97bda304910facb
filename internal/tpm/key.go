package tpm

import (
	"crypto/hmac"
	"crypto/sha256"
	"strings"
)

// IdentityKeyBytes is the size of a device's identity key: an HMAC-SHA256
// key, as long as the symmetric keys dpsd gives devices elsewhere.
const IdentityKeyBytes = 32

// IdentityKey derives the identity key of the TPM device registrationID
// with endorsement key ek (its public area, as enrolled) from the
// instance's secret. Deriving it rather than storing a random one keeps
// every node able to verify a device's proof without state shared per
// challenge, and keeps the device's hub key the same across
// re-registrations, so a device whose registration fails half-way still
// holds the key its hub knows. Only the TPM that holds ek's private part
// can recover the key from an activation blob.
func IdentityKey(secret []byte, registrationID string, ek []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("dpsd tpm identity key\x00"))
	m.Write([]byte(strings.ToLower(registrationID)))
	m.Write([]byte{0})
	m.Write(ek)
	return m.Sum(nil)[:IdentityKeyBytes]
}
