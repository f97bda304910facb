package tpm

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// innerKeyBytes is the size of the AES-128 key that protects the
// duplicated identity key inside the credential (the SDKs use whatever
// size the service chose, in CFB mode).
const innerKeyBytes = 16

// Activation builds the activation blob ("authenticationKey") that Azure
// DPS sends a TPM device: an HMAC-SHA256 identity key, duplicated to the
// device's storage root key under an inner AES key, with that inner key
// sent as a credential that only the TPM holding the endorsement key can
// recover (TPM2_ActivateCredential), bound to the storage root key's name.
//
// The layout is what the SDKs unmarshal (Node azure-iot-security-tpm
// _activateIdentityKey, C hsm_client_tpm insert_key_in_tpm, C#
// SecurityProviderTpmHsm.ActivateIdentityKey), in order:
//
//	TPM2B_ID_OBJECT         credential blob (TPM2_MakeCredential to the EK, name = SRK name)
//	TPM2B_ENCRYPTED_SECRET  its seed, RSA-OAEP to the EK, label "IDENTITY"
//	TPM2B_PRIVATE           the identity key duplicated to the SRK (inner wrapper: the credential's AES key)
//	TPM2B_ENCRYPTED_SECRET  the duplication seed, RSA-OAEP to the SRK, label "DUPLICATE"
//	TPM2B_PUBLIC            the identity key's public area (keyedHash, HMAC-SHA256, sign|userWithAuth|noDA)
//	TPM2B_DATA              encrypted URI data: empty
//
// The device imports the key under its SRK and persists it at 0x81000100;
// its HMAC over "<scope>/registrations/<id>\n<expiry>" signs the SAS token
// that proves possession, and the same key becomes the device's symmetric
// key in its hub.
func Activation(ek, srk *StorageKey, identityKey []byte) ([]byte, error) {
	return activation(rand.Reader, ek, srk, identityKey)
}

func activation(rnd io.Reader, ek, srk *StorageKey, identityKey []byte) ([]byte, error) {
	if len(identityKey) == 0 || len(identityKey) > 64 {
		return nil, fmt.Errorf("tpm: identity key of %d bytes (want 1 to 64)", len(identityKey))
	}
	inner := make([]byte, innerKeyBytes)
	if _, err := io.ReadFull(rnd, inner); err != nil {
		return nil, fmt.Errorf("tpm: random: %w", err)
	}
	idObject, encSecret, err := makeCredential(rnd, ek, inner, srk.Name())
	if err != nil {
		return nil, err
	}
	public, sensitive, err := hmacKeyAreas(rnd, identityKey)
	if err != nil {
		return nil, err
	}
	name := objectName(algSHA256, crypto.SHA256, public)
	dup, encSeed, err := duplicate(rnd, srk, inner, sensitive, name)
	if err != nil {
		return nil, err
	}
	var b []byte
	b = sized2B(b, idObject)
	b = sized2B(b, encSecret)
	b = sized2B(b, dup)
	b = sized2B(b, encSeed)
	b = sized2B(b, public)
	b = sized2B(b, nil) // encUriData
	return b, nil
}

// makeCredential is TPM2_MakeCredential done in software (TPM 2.0 Part 1,
// 24 "Credential Protection"): it returns the TPMS_ID_OBJECT and the
// encrypted seed for credential, bound to the object named name.
func makeCredential(rnd io.Reader, ek *StorageKey, credential, name []byte) (idObject, encSecret []byte, err error) {
	h := ek.NameAlg
	seed := make([]byte, h.Size())
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, nil, fmt.Errorf("tpm: random: %w", err)
	}
	encSecret, err = rsa.EncryptOAEP(h.New(), rnd, ek.Key, seed, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, nil, fmt.Errorf("tpm: encrypt the credential seed to the endorsement key: %w", err)
	}
	symKey := kdfa(h, seed, "STORAGE", name, nil, ek.SymBits)
	encIdentity, err := cfbEncrypt(symKey, sized2B(nil, credential))
	if err != nil {
		return nil, nil, err
	}
	hmacKey := kdfa(h, seed, "INTEGRITY", nil, nil, h.Size()*8)
	mac := hmac.New(h.New, hmacKey)
	mac.Write(encIdentity)
	mac.Write(name)
	idObject = sized2B(nil, mac.Sum(nil))
	idObject = append(idObject, encIdentity...)
	return idObject, encSecret, nil
}

// hmacKeyAreas returns the public area (TPMT_PUBLIC) and the sensitive area
// (TPM2B_SENSITIVE) of an HMAC-SHA256 keyedHash key holding key.
func hmacKeyAreas(rnd io.Reader, key []byte) (public, sensitive []byte, err error) {
	seedValue := make([]byte, sha256.Size)
	if _, err := io.ReadFull(rnd, seedValue); err != nil {
		return nil, nil, fmt.Errorf("tpm: random: %w", err)
	}
	unique := sha256.New()
	unique.Write(seedValue)
	unique.Write(key)

	public = binary.BigEndian.AppendUint16(public, algKeyedHash)
	public = binary.BigEndian.AppendUint16(public, algSHA256)
	public = binary.BigEndian.AppendUint32(public, attrUserWithAuth|attrNoDA|attrSign)
	public = sized2B(public, nil) // authPolicy
	public = binary.BigEndian.AppendUint16(public, algHMAC)
	public = binary.BigEndian.AppendUint16(public, algSHA256)
	public = sized2B(public, unique.Sum(nil))

	var s []byte // TPMT_SENSITIVE
	s = binary.BigEndian.AppendUint16(s, algKeyedHash)
	s = sized2B(s, nil) // authValue: empty, as the SDKs sign with a null password
	s = sized2B(s, seedValue)
	s = sized2B(s, key)
	return public, sized2B(nil, s), nil
}

// duplicate wraps sensitive for import under srk (TPM 2.0 Part 1, 23.3
// "Duplication"): the inner wrapper encrypts it with innerKey (AES-CFB,
// zero IV) after an integrity digest, the outer wrapper with a key derived
// from a seed encrypted to srk, with an HMAC over the result and the name.
func duplicate(rnd io.Reader, srk *StorageKey, innerKey, sensitive, name []byte) (dup, encSeed []byte, err error) {
	d := sha256.New() // the identity key's name algorithm
	d.Write(sensitive)
	d.Write(name)
	plain := sized2B(nil, d.Sum(nil))
	plain = append(plain, sensitive...)
	encInner, err := cfbEncrypt(innerKey, plain)
	if err != nil {
		return nil, nil, err
	}

	h := srk.NameAlg
	seed := make([]byte, h.Size())
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, nil, fmt.Errorf("tpm: random: %w", err)
	}
	encSeed, err = rsa.EncryptOAEP(h.New(), rnd, srk.Key, seed, []byte("DUPLICATE\x00"))
	if err != nil {
		return nil, nil, fmt.Errorf("tpm: encrypt the duplication seed to the storage root key: %w", err)
	}
	symKey := kdfa(h, seed, "STORAGE", name, nil, srk.SymBits)
	encOuter, err := cfbEncrypt(symKey, encInner)
	if err != nil {
		return nil, nil, err
	}
	hmacKey := kdfa(h, seed, "INTEGRITY", nil, nil, h.Size()*8)
	mac := hmac.New(h.New, hmacKey)
	mac.Write(encOuter)
	mac.Write(name)
	dup = sized2B(nil, mac.Sum(nil))
	dup = append(dup, encOuter...)
	return dup, encSeed, nil
}

// cfbEncrypt is AES in CFB mode with a zero IV, as TPM 2.0 protects
// credentials and duplicated objects (each key is used once).
func cfbEncrypt(key, plain []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	out := make([]byte, len(plain))
	//lint:ignore SA1019 TPM 2.0 mandates CFB for these wrappers; integrity comes from the HMAC beside it.
	cipher.NewCFBEncrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(out, plain)
	return out, nil
}

// kdfa is TPM 2.0's KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with
// HMAC, label NUL-terminated, the output size in bits last.
func kdfa(h crypto.Hash, key []byte, label string, contextU, contextV []byte, bits int) []byte {
	n := (bits + 7) / 8
	var out []byte
	for i := uint32(1); len(out) < n; i++ {
		mac := hmac.New(h.New, key)
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], i)
		mac.Write(b[:])
		mac.Write([]byte(label))
		mac.Write([]byte{0})
		mac.Write(contextU)
		mac.Write(contextV)
		binary.BigEndian.PutUint32(b[:], uint32(bits))
		mac.Write(b[:])
		out = mac.Sum(out)
	}
	return out[:n]
}

// ErrNoStorageRootKey is returned when a TPM device's request carries no
// storage root key and its enrollment records none.
var ErrNoStorageRootKey = errors.New("tpm: no storage root key")
