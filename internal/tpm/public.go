package tpm

import (
	"crypto"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
)

// TPM 2.0 algorithm identifiers (TPM_ALG_ID) this package reads or writes.
const (
	algRSA       = 0x0001
	algSHA1      = 0x0004
	algHMAC      = 0x0005
	algAES       = 0x0006
	algKeyedHash = 0x0008
	algSHA256    = 0x000B
	algSHA384    = 0x000C
	algNull      = 0x0010
	algCFB       = 0x0043
)

// Object attributes (TPMA_OBJECT) this package checks or sets.
const (
	attrUserWithAuth = 1 << 6
	attrNoDA         = 1 << 10
	attrRestricted   = 1 << 16
	attrDecrypt      = 1 << 17
	attrSign         = 1 << 18
)

// maxPublicBytes bounds a TPM2B_PUBLIC: an RSA 4096 key's public area is
// well under 1 KB; Azure's limit on the whole register body is 96 KB.
const maxPublicBytes = 2048

// StorageKey is an RSA storage key of a TPM (its endorsement key or its
// storage root key) as the device sent its public area: a restricted
// decryption key, to which secrets are encrypted with RSA-OAEP and whose
// symmetric algorithm protects what is wrapped for it.
type StorageKey struct {
	// Public is the marshalled TPMT_PUBLIC (without the TPM2B size).
	Public []byte
	// NameAlg is the key's name algorithm.
	NameAlg crypto.Hash
	nameAlg uint16
	// Key is the RSA public key.
	Key *rsa.PublicKey
	// SymBits is the key size of the key's AES-CFB symmetric algorithm.
	SymBits int
}

// Name is the TPM name of the key: its name algorithm's identifier and the
// digest of its public area.
func (k *StorageKey) Name() []byte {
	return objectName(k.nameAlg, k.NameAlg, k.Public)
}

func objectName(id uint16, h crypto.Hash, public []byte) []byte {
	d := h.New()
	d.Write(public)
	return d.Sum(binary.BigEndian.AppendUint16(nil, id))
}

// ParseStorageKey reads a TPM2B_PUBLIC (as the SDKs send the endorsement
// and storage root keys, base64-decoded) and checks it is an RSA storage
// key: restricted, decrypt, AES-CFB symmetric, SHA-1/256/384 name
// algorithm. A bare TPMT_PUBLIC (no size prefix) is accepted too.
func ParseStorageKey(b []byte) (*StorageKey, error) {
	if len(b) > maxPublicBytes {
		return nil, fmt.Errorf("tpm: public area of %d bytes is too large", len(b))
	}
	if len(b) >= 2 && int(binary.BigEndian.Uint16(b)) == len(b)-2 {
		b = b[2:]
	}
	r := reader{b: b}
	typ := r.u16()
	nameAlg := r.u16()
	attrs := r.u32()
	r.sized() // authPolicy
	if r.err != nil {
		return nil, r.err
	}
	if typ != algRSA {
		return nil, fmt.Errorf("tpm: key type 0x%04x is not RSA (only RSA endorsement and storage keys are supported)", typ)
	}
	h, err := hashOf(nameAlg)
	if err != nil {
		return nil, err
	}
	if attrs&attrRestricted == 0 || attrs&attrDecrypt == 0 {
		return nil, errors.New("tpm: the key is not a restricted decryption (storage) key")
	}
	k := &StorageKey{Public: b, NameAlg: h, nameAlg: nameAlg}
	// TPMS_RSA_PARMS: symmetric, scheme, keyBits, exponent.
	if sym := r.u16(); sym != algAES {
		if r.err != nil {
			return nil, r.err
		}
		return nil, fmt.Errorf("tpm: symmetric algorithm 0x%04x is not AES", sym)
	}
	k.SymBits = int(r.u16())
	if mode := r.u16(); mode != algCFB && r.err == nil {
		return nil, fmt.Errorf("tpm: symmetric mode 0x%04x is not CFB", mode)
	}
	if k.SymBits != 128 && k.SymBits != 192 && k.SymBits != 256 {
		return nil, fmt.Errorf("tpm: AES key size %d is not supported", k.SymBits)
	}
	if scheme := r.u16(); scheme != algNull {
		r.u16() // the scheme's hash; a storage key's scheme is TPM_ALG_NULL
	}
	bits := r.u16()
	exp := r.u32()
	mod := r.sized()
	if r.err != nil {
		return nil, r.err
	}
	if r.rest() != 0 {
		return nil, errors.New("tpm: trailing bytes after the public area")
	}
	if exp == 0 {
		exp = 65537
	}
	if bits < 2048 || bits > 4096 || len(mod)*8 != int(bits) {
		return nil, fmt.Errorf("tpm: RSA key of %d bits (modulus %d bytes) is not supported", bits, len(mod))
	}
	k.Key = &rsa.PublicKey{N: new(big.Int).SetBytes(mod), E: int(exp)}
	return k, nil
}

func hashOf(alg uint16) (crypto.Hash, error) {
	switch alg {
	case algSHA1:
		return crypto.SHA1, nil
	case algSHA256:
		return crypto.SHA256, nil
	case algSHA384:
		return crypto.SHA384, nil
	}
	return 0, fmt.Errorf("tpm: name algorithm 0x%04x is not supported", alg)
}

// reader reads TPM's big-endian marshalling; the first short read sets err
// and every later read returns zero.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = errors.New("tpm: public area truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) sized() []byte { return r.take(int(r.u16())) }

func (r *reader) rest() int { return len(r.b) }

// sized2B appends b with its 16-bit size (a TPM2B).
func sized2B(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...)
}
