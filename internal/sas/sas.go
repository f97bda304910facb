package sas

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every token.
const Prefix = "SharedAccessSignature"

// Token is a parsed shared access signature. Resource keeps sr exactly as
// sent, because SDKs encode it differently and sign what they send.
type Token struct {
	Resource  string // sr as it appeared in the token, not decoded
	Signature []byte // sig, decoded
	KeyName   string // skn, decoded; may be empty
	Expiry    int64  // se, Unix seconds
	rawExpiry string
}

// Errors returned by Parse and Verify.
var (
	ErrMalformed = errors.New("sas: malformed token")
	ErrExpired   = errors.New("sas: token expired")
	ErrSignature = errors.New("sas: signature mismatch")
)

// MaxTokenLen bounds what Parse reads; real tokens are a few hundred bytes.
const MaxTokenLen = 4096

// Parse reads "SharedAccessSignature sr=..&sig=..&se=..[&skn=..]" with the
// fields in any order.
func Parse(s string) (*Token, error) {
	if len(s) > MaxTokenLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), Prefix)
	if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrMalformed, Prefix)
	}
	rest = strings.TrimSpace(rest)
	var t Token
	var haveSr, haveSig, haveSe bool
	for part := range strings.SplitSeq(rest, "&") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%w: field %q has no value", ErrMalformed, k)
		}
		switch k {
		case "sr":
			if haveSr {
				return nil, fmt.Errorf("%w: repeated sr", ErrMalformed)
			}
			t.Resource, haveSr = v, true
		case "sig":
			if haveSig {
				return nil, fmt.Errorf("%w: repeated sig", ErrMalformed)
			}
			dec, err := url.PathUnescape(v) // '+' is literal base64, not a space
			if err != nil {
				return nil, fmt.Errorf("%w: sig: %v", ErrMalformed, err)
			}
			sig, err := base64.StdEncoding.DecodeString(dec)
			if err != nil || len(sig) != sha256.Size {
				return nil, fmt.Errorf("%w: sig is not a base64 HMAC-SHA256", ErrMalformed)
			}
			t.Signature, haveSig = sig, true
		case "se":
			if haveSe {
				return nil, fmt.Errorf("%w: repeated se", ErrMalformed)
			}
			dec, err := url.PathUnescape(v)
			if err != nil {
				return nil, fmt.Errorf("%w: se: %v", ErrMalformed, err)
			}
			n, err := strconv.ParseInt(dec, 10, 64)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("%w: se is not a positive integer", ErrMalformed)
			}
			t.Expiry, t.rawExpiry, haveSe = n, v, true
		case "skn":
			dec, err := url.QueryUnescape(v)
			if err != nil {
				return nil, fmt.Errorf("%w: skn: %v", ErrMalformed, err)
			}
			t.KeyName = dec
		default:
			// Unknown fields are ignored, as Azure does.
		}
	}
	if !haveSr || !haveSig || !haveSe {
		return nil, fmt.Errorf("%w: needs sr, sig and se", ErrMalformed)
	}
	return &t, nil
}

// DecodedResource is sr with percent escapes removed ('+' kept literal).
func (t *Token) DecodedResource() (string, error) {
	return url.PathUnescape(t.Resource)
}

// ExpiredAt reports whether the token is no longer valid at now.
func (t *Token) ExpiredAt(now time.Time) bool {
	return t.Expiry <= now.Unix()
}

// Verify checks the signature against key (the raw key bytes) over sr and se
// exactly as sent, in constant time. It does not check expiry or audience.
func (t *Token) Verify(key []byte) bool {
	return hmac.Equal(t.Signature, sign(key, t.Resource, t.rawExpiry))
}

// VerifyAny returns the index of the first key that verifies the token, or -1.
// Every key is tried so the time taken does not tell which one matched.
func (t *Token) VerifyAny(keys ...[]byte) int {
	found := -1
	for i, k := range keys {
		if k != nil && t.Verify(k) && found < 0 {
			found = i
		}
	}
	return found
}

func sign(key []byte, resource, expiry string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(resource))
	m.Write([]byte{'\n'})
	m.Write([]byte(expiry))
	return m.Sum(nil)
}

// New builds a token for resource (placed in sr verbatim), signed with the
// base64 key, valid until expiry. keyName may be empty.
func New(resource, keyName, base64Key string, expiry time.Time) (string, error) {
	key, err := base64.StdEncoding.DecodeString(base64Key)
	if err != nil {
		return "", fmt.Errorf("sas: key is not base64: %w", err)
	}
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig := base64.StdEncoding.EncodeToString(sign(key, resource, se))
	var b strings.Builder
	b.WriteString(Prefix)
	b.WriteString(" sr=")
	b.WriteString(resource)
	b.WriteString("&sig=")
	b.WriteString(url.QueryEscape(sig))
	b.WriteString("&se=")
	b.WriteString(se)
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(url.QueryEscape(keyName))
	}
	return b.String(), nil
}

// DeriveDeviceKey returns base64(HMAC-SHA256(base64decode(groupKey), registrationID)),
// the key a member of a symmetric-key enrollment group signs with.
func DeriveDeviceKey(groupKey, registrationID string) (string, error) {
	key, err := base64.StdEncoding.DecodeString(groupKey)
	if err != nil {
		return "", fmt.Errorf("sas: group key is not base64: %w", err)
	}
	return base64.StdEncoding.EncodeToString(DeriveKeyBytes(key, registrationID)), nil
}

// DeriveKeyBytes is DeriveDeviceKey on raw key bytes.
func DeriveKeyBytes(groupKey []byte, registrationID string) []byte {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(registrationID))
	return m.Sum(nil)
}

// GenerateKey returns n random bytes in base64; Azure generates 64-byte keys.
func GenerateKey(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("sas: crypto/rand failed: " + err.Error()) // never on a supported platform
	}
	return base64.StdEncoding.EncodeToString(b)
}
