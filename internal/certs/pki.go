package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"
)

// DefaultValidity is how long test certificates are valid: 30 days, as in
// Azure's sample scripts (certGen.sh).
const DefaultValidity = 30 * 24 * time.Hour

// Issued is a certificate with its private key and the certificates of its
// issuers, nearest first (empty for a root).
type Issued struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	Issuers []*x509.Certificate
}

// IssueOptions tune a test certificate.
type IssueOptions struct {
	// Validity is the lifetime from NotBefore (from now when NotBefore is
	// zero); zero means DefaultValidity.
	Validity time.Duration
	// NotBefore is the start of validity; zero means now, backdated by an
	// hour so that clocks a little behind still accept the certificate.
	NotBefore time.Time
}

func (o IssueOptions) window() (time.Time, time.Time) {
	v := o.Validity
	if v == 0 {
		v = DefaultValidity
	}
	if o.NotBefore.IsZero() {
		now := time.Now()
		return now.Add(-time.Hour), now.Add(v)
	}
	return o.NotBefore, o.NotBefore.Add(v)
}

// NewRoot makes a self-signed root CA.
func NewRoot(commonName string, o IssueOptions) (*Issued, error) {
	return issue(nil, commonName, true, o)
}

// Intermediate makes a CA certificate signed by ca.
func (ca *Issued) Intermediate(commonName string, o IssueOptions) (*Issued, error) {
	return issue(ca, commonName, true, o)
}

// Device makes a device (client authentication) certificate signed by ca;
// commonName is the device's registration id.
func (ca *Issued) Device(commonName string, o IssueOptions) (*Issued, error) {
	return issue(ca, commonName, false, o)
}

// Verification makes the proof-of-possession certificate for a
// verification code: subject CN = code, signed by ca.
func (ca *Issued) Verification(code string, o IssueOptions) (*Issued, error) {
	return issue(ca, code, false, o)
}

func issue(parent *Issued, cn string, isCA bool, o IssueOptions) (*Issued, error) {
	if strings.TrimSpace(cn) == "" {
		return nil, errors.New("certs: the common name is empty")
	}
	if parent != nil && (!parent.Cert.IsCA || parent.Key == nil) {
		return nil, fmt.Errorf("certs: %q is not a CA with a private key", parent.Cert.Subject.CommonName)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("certs: public key: %w", err)
	}
	ski := sha1.Sum(pub)
	nb, na := o.window()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             nb,
		NotAfter:              na,
		SubjectKeyId:          ski[:],
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	var issuers []*x509.Certificate
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
		issuers = append([]*x509.Certificate{parent.Cert}, parent.Issuers...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signerKey)
	if err != nil {
		return nil, fmt.Errorf("certs: create certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse certificate: %w", err)
	}
	return &Issued{Cert: c, Key: key, Issuers: issuers}, nil
}

// CertPEM is the certificate alone, in PEM.
func (i *Issued) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.Cert.Raw})
}

// ChainPEM is the certificate followed by its issuers up to the root, in
// PEM: what a device presents (Azure's "-full-chain" file).
func (i *Issued) ChainPEM() []byte {
	out := i.CertPEM()
	for _, c := range i.Issuers {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM is the private key in PKCS #8 PEM.
func (i *Issued) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(i.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Files are where WriteFiles puts a certificate: prefix + ".cert.pem",
// "-full-chain.cert.pem" and ".key.pem", as Azure's sample scripts name
// them.
type Files struct {
	Cert, FullChain, Key string
}

// FilesFor returns the file names for a path prefix such as "certs/root".
func FilesFor(prefix string) Files {
	return Files{Cert: prefix + ".cert.pem", FullChain: prefix + "-full-chain.cert.pem", Key: prefix + ".key.pem"}
}

// WriteFiles writes the certificate, its full chain and its key (mode
// 0600) next to each other.
func (i *Issued) WriteFiles(f Files) error {
	key, err := i.KeyPEM()
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.Cert, i.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := os.WriteFile(f.FullChain, i.ChainPEM(), 0o644); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := os.WriteFile(f.Key, key, 0o600); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

// Load reads a certificate written by WriteFiles: the full chain when
// present (so issuers carry over to what it signs), else the certificate
// alone, and its key.
func Load(f Files) (*Issued, error) {
	certPEM, err := os.ReadFile(f.FullChain)
	if errors.Is(err, os.ErrNotExist) {
		certPEM, err = os.ReadFile(f.Cert)
	}
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	chain, err := ParseChain(certPEM)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: chain[0], Key: key, Issuers: chain[1:]}, nil
}

// ParseChain reads every certificate of a PEM bundle, in order.
func ParseChain(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("certs: no PEM certificate found")
	}
	return out, nil
}

// ParseKey reads a PEM private key: PKCS #8, EC or PKCS #1 RSA.
func ParseKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("certs: no PEM private key found")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("certs: parse private key: %w", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("certs: unsupported private key type %T", k)
		}
		return s, nil
	}
}
