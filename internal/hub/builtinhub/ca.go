package builtinhub

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/store"
)

// KindCA holds the CA certificates a built-in hub trusts for
// certificateAuthority devices; id = hub/SHA-256 thumbprint, Ref = hub name.
const KindCA = store.KindHubCA

// maxCAs bounds the CA certificates one hub reads at a CONNECT.
const maxCAs = 1000

type caDoc struct {
	Certificate string    `json:"certificate"` // PEM
	Added       time.Time `json:"added"`
}

var _ azurehub.CertificateAuthorities = (*Hub)(nil)

// AddCertificateAuthority makes the hub accept certificateAuthority
// devices whose certificate chains to certPEM (the CA that vouched for
// them at provisioning). It implements azurehub.CertificateAuthorities.
func (h *Hub) AddCertificateAuthority(ctx context.Context, certPEM string) error {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The CA certificate must be one PEM certificate.")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The CA certificate cannot be read: %v", err)
	}
	sum := sha256.Sum256(c.Raw)
	id := deviceKey(h.cfg.Name, hex.EncodeToString(sum[:]))
	if _, err := h.st.Get(ctx, KindCA, id); err == nil {
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return storeErr(err)
	}
	data, err := json.Marshal(caDoc{Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})), Added: h.now().UTC()})
	if err != nil {
		return fmt.Errorf("encode CA certificate: %w", err)
	}
	_, err = h.st.Put(ctx, store.Record{Kind: KindCA, ID: id, Ref: h.cfg.Name, Data: data}, store.Condition{MustNotExist: true})
	if err != nil && !errors.Is(err, store.ErrExists) {
		return storeErr(err)
	}
	if err == nil {
		h.log.Info("hub trusts CA certificate", "subject", c.Subject.String(), "sha256", hex.EncodeToString(sum[:]))
	}
	return nil
}

// trustedCAs reads the hub's CA certificates.
func (h *Hub) trustedCAs(ctx context.Context) ([]*x509.Certificate, error) {
	recs, _, err := h.st.List(ctx, KindCA, store.ListOptions{Ref: h.cfg.Name, Limit: maxCAs})
	if err != nil {
		return nil, err
	}
	out := make([]*x509.Certificate, 0, len(recs))
	for _, rec := range recs {
		var d caDoc
		if json.Unmarshal(rec.Data, &d) != nil {
			continue
		}
		b, _ := pem.Decode([]byte(d.Certificate))
		if b == nil {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// checkCADevice authenticates a certificateAuthority device: its
// certificate names it (subject CN = device id), is valid for client
// authentication and chains to a CA the hub trusts. The TLS handshake
// already proved the device holds the certificate's key.
func (h *Hub) checkCADevice(ctx context.Context, id string, peers []*x509.Certificate) error {
	if len(peers) == 0 {
		return errors.New("certificateAuthority device presented no certificate")
	}
	leaf := peers[0]
	if leaf.Subject.CommonName != id {
		return fmt.Errorf("client certificate CN %q is not the device id", leaf.Subject.CommonName)
	}
	cas, err := h.trustedCAs(ctx)
	if err != nil {
		return err
	}
	if len(cas) == 0 {
		return errors.New("the hub trusts no CA certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
		inter.AddCert(c)
	}
	for _, c := range peers[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   h.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	return nil
}
