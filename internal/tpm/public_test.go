package tpm

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"strings"
	"testing"
)

// storagePublic marshals the public area of an RSA storage key as a TPM
// would (TPMT_PUBLIC), with the fields a test may change.
type storagePublic struct {
	typ, nameAlg   uint16
	attrs          uint32
	sym, symBits   uint16
	mode, scheme   uint16
	bits           uint16
	exponent       uint32
	modulus        []byte
	trailing       []byte
	withSizePrefix bool
}

func newStoragePublic(tb testing.TB) storagePublic {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return storagePublic{
		typ: algRSA, nameAlg: algSHA256, attrs: attrRestricted | attrDecrypt | attrUserWithAuth,
		sym: algAES, symBits: 128, mode: algCFB, scheme: algNull, bits: 2048,
		modulus: k.N.Bytes(), withSizePrefix: true,
	}
}

func (p storagePublic) bytes() []byte {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, p.typ)
	b = binary.BigEndian.AppendUint16(b, p.nameAlg)
	b = binary.BigEndian.AppendUint32(b, p.attrs)
	b = sized2B(b, nil)
	b = binary.BigEndian.AppendUint16(b, p.sym)
	b = binary.BigEndian.AppendUint16(b, p.symBits)
	b = binary.BigEndian.AppendUint16(b, p.mode)
	b = binary.BigEndian.AppendUint16(b, p.scheme)
	b = binary.BigEndian.AppendUint16(b, p.bits)
	b = binary.BigEndian.AppendUint32(b, p.exponent)
	b = sized2B(b, p.modulus)
	b = append(b, p.trailing...)
	if p.withSizePrefix {
		b = sized2B(nil, b)
	}
	return b
}

func TestParseStorageKey(t *testing.T) {
	good := newStoragePublic(t)
	for _, tc := range []struct {
		name   string
		change func(*storagePublic)
		err    string // empty: accepted
	}{
		{"TPM2B_PUBLIC", func(*storagePublic) {}, ""},
		{"bare TPMT_PUBLIC", func(p *storagePublic) { p.withSizePrefix = false }, ""},
		{"SHA-1 name", func(p *storagePublic) { p.nameAlg = algSHA1 }, ""},
		{"AES-256", func(p *storagePublic) { p.symBits = 256 }, ""},
		{"ECC key", func(p *storagePublic) { p.typ = 0x0023 }, "not RSA"},
		{"SM3 name", func(p *storagePublic) { p.nameAlg = 0x0012 }, "name algorithm"},
		{"not restricted", func(p *storagePublic) { p.attrs &^= attrRestricted }, "storage"},
		{"signing key", func(p *storagePublic) { p.attrs = attrSign }, "storage"},
		{"no symmetric algorithm", func(p *storagePublic) { p.sym = algNull }, "not AES"},
		{"CTR mode", func(p *storagePublic) { p.mode = 0x0040 }, "not CFB"},
		{"odd AES size", func(p *storagePublic) { p.symBits = 64 }, "AES key size"},
		{"RSA 1024", func(p *storagePublic) { p.bits = 1024; p.modulus = p.modulus[:128] }, "not supported"},
		{"modulus shorter than its size says", func(p *storagePublic) { p.modulus = p.modulus[:100] }, "not supported"},
		{"trailing bytes", func(p *storagePublic) { p.trailing = []byte{1} }, "trailing"},
		{"truncated", func(p *storagePublic) { p.modulus = nil; p.bits = 0; p.withSizePrefix = false }, "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good
			tc.change(&p)
			k, err := ParseStorageKey(p.bytes())
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("err = %v, want one saying %q", err, tc.err)
			case err == nil && (k.Key.E != 65537 || len(k.Name()) != 2+k.NameAlg.Size()):
				t.Fatalf("key %+v, name %x", k.Key, k.Name())
			}
		})
	}
	if _, err := ParseStorageKey(good.bytes()[:10]); err == nil {
		t.Error("a truncated public area was accepted")
	}
	if _, err := ParseStorageKey(make([]byte, maxPublicBytes+1)); err == nil {
		t.Error("an oversized public area was accepted")
	}
}

// TestActivationLayout checks the blob is the six TPM2B fields the SDKs
// read, in order, with nothing after them.
func TestActivationLayout(t *testing.T) {
	k, err := ParseStorageKey(newStoragePublic(t).bytes())
	if err != nil {
		t.Fatal(err)
	}
	blob, err := Activation(k, k, bytes.Repeat([]byte{7}, IdentityKeyBytes))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for b := blob; len(b) > 0; {
		n := int(binary.BigEndian.Uint16(b))
		sizes = append(sizes, n)
		b = b[2+n:]
	}
	// ID object: HMAC (2+32) and the encrypted 2+16-byte credential;
	// encrypted secrets: 256 bytes; the public area of the HMAC key: 48
	// bytes; no URI data.
	if len(sizes) != 6 || sizes[0] != 2+32+2+16 || sizes[1] != 256 || sizes[3] != 256 || sizes[4] != 48 || sizes[5] != 0 {
		t.Fatalf("field sizes %v", sizes)
	}
	if _, err := Activation(k, k, nil); err == nil {
		t.Error("an empty identity key was accepted")
	}
}

// TestIdentityKey: one key per instance, device and EK, whatever the case
// of the registration id.
func TestIdentityKey(t *testing.T) {
	a := IdentityKey([]byte("s"), "Dev-1", []byte("ek"))
	if len(a) != IdentityKeyBytes || !bytes.Equal(a, IdentityKey([]byte("s"), "dev-1", []byte("ek"))) {
		t.Fatal("the identity key must not depend on the registration id's case")
	}
	for _, other := range [][]byte{
		IdentityKey([]byte("t"), "dev-1", []byte("ek")),
		IdentityKey([]byte("s"), "dev-2", []byte("ek")),
		IdentityKey([]byte("s"), "dev-1", []byte("ek2")),
	} {
		if bytes.Equal(a, other) {
			t.Fatal("identity keys of different inputs are equal")
		}
	}
}

func FuzzParseStorageKey(f *testing.F) {
	good := newStoragePublic(f)
	f.Add(good.bytes())
	good.withSizePrefix = false
	f.Add(good.bytes())
	f.Add([]byte{0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseStorageKey(b)
		if err != nil {
			return
		}
		if k.Key == nil || k.Key.N.BitLen() > 4096 || len(k.Name()) != 2+k.NameAlg.Size() {
			t.Fatalf("accepted key %+v", k)
		}
	})
}
