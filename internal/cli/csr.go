package cli

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
)

// loadOrMakeCSR returns the DER csr and its key: read from csrFile and
// keyFile when given, or a new P-256 key and a csr for regID.
func loadOrMakeCSR(regID, csrFile, keyFile string) (der []byte, key crypto.Signer, generated bool, err error) {
	if csrFile == "" {
		if keyFile != "" {
			return nil, nil, false, errors.New("--csr-key-file goes with --csr-file")
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, false, fmt.Errorf("generate key: %w", err)
		}
		der, err := device.NewCSR(regID, k)
		return der, k, true, err
	}
	if keyFile == "" {
		return nil, nil, false, errors.New("--csr-file needs --csr-key-file, its private key")
	}
	raw, err := os.ReadFile(csrFile)
	if err != nil {
		return nil, nil, false, fmt.Errorf("--csr-file: %w", err)
	}
	if b, _ := pem.Decode(raw); b != nil {
		raw = b.Bytes
	}
	req, err := x509.ParseCertificateRequest(raw)
	if err != nil {
		return nil, nil, false, fmt.Errorf("--csr-file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, false, fmt.Errorf("--csr-key-file: %w", err)
	}
	key, err = parseKey(keyPEM)
	if err != nil {
		return nil, nil, false, fmt.Errorf("--csr-key-file: %w", err)
	}
	if pub, ok := req.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, nil, false, errors.New("--csr-key-file is not the key of --csr-file")
	}
	return raw, key, false, nil
}

// parseKey reads a PEM private key in any of the usual encodings.
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, errors.New("no PEM private key")
	}
	for _, parse := range []func([]byte) (any, error){
		x509.ParsePKCS8PrivateKey,
		func(d []byte) (any, error) { return x509.ParseECPrivateKey(d) },
		func(d []byte) (any, error) { return x509.ParsePKCS1PrivateKey(d) },
	} {
		if k, err := parse(b.Bytes); err == nil {
			if s, ok := k.(crypto.Signer); ok {
				return s, nil
			}
		}
	}
	return nil, errors.New("the private key cannot be read")
}

// writeIssued writes the issued chain (PEM, leaf first) to certOut and,
// when the key was generated here, the key to keyOut (mode 0600).
func writeIssued(state *dps.DeviceRegistrationState, key crypto.Signer, generatedKey bool, certOut, keyOut string) error {
	if _, err := device.IssuedCertificate(state, key); err != nil {
		return err
	}
	var chain bytes.Buffer
	for _, b := range state.IssuedCertificateChain {
		der, err := base64.StdEncoding.DecodeString(b)
		if err != nil {
			return fmt.Errorf("issuedCertificateChain: %w", err)
		}
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	if err := os.WriteFile(certOut, chain.Bytes(), 0o644); err != nil {
		return fmt.Errorf("--issued-cert-out: %w", err)
	}
	if !generatedKey {
		return nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := os.WriteFile(keyOut, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("--issued-key-out: %w", err)
	}
	// The pair must load as what a device gives its TLS stack.
	if _, err := tls.LoadX509KeyPair(certOut, keyOut); err != nil {
		return fmt.Errorf("the written certificate and key do not load: %w", err)
	}
	return nil
}
