package issuer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/store"
)

// Kind is the store collection of operators' issuing CAs.
const Kind = store.KindIssuingCA

// MaxAuthorities bounds how many issuing CAs an instance keeps.
const MaxAuthorities = 100

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Registry finds issuing CAs: the local CA under LocalName, and the CAs
// operators stored. Stored CAs keep their private key in the store, so the
// store's backups hold it too; operations.md says so.
type Registry struct {
	st    store.Store
	local *Authority
	now   func() time.Time
}

// NewRegistry returns a registry over st; local, when not nil, is served
// as LocalName.
func NewRegistry(st store.Store, local *Authority) *Registry {
	if local != nil {
		local.Name = LocalName
	}
	return &Registry{st: st, local: local, now: time.Now}
}

type doc struct {
	Name         string `json:"name"`
	Certificates string `json:"certificates"` // PEM, CA first
	PrivateKey   string `json:"privateKey"`   // PEM PKCS#8
}

// Authority returns the CA called name (case-insensitive). An unknown name
// is a *dps.Error CodeCertificateIssuanceNotConfigured, since it is the
// enrollment that names it.
func (r *Registry) Authority(ctx context.Context, name string) (*Authority, error) {
	if strings.EqualFold(name, LocalName) && r.local != nil {
		return r.local, nil
	}
	rec, err := r.st.Get(ctx, Kind, strings.ToLower(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, dps.Errorf(dps.CodeCertificateIssuanceNotConfigured, "The enrollment's issuing CA %q does not exist.", name)
	}
	if err != nil {
		return nil, fmt.Errorf("read issuing CA %q: %w", name, err)
	}
	var d doc
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return nil, fmt.Errorf("decode issuing CA %q: %w", name, err)
	}
	return parseAuthority(d.Name, d.Certificates, d.PrivateKey, time.Time{})
}

// parseAuthority reads a CA's certificates and key; with a non-zero now it
// also refuses one that is expired.
func parseAuthority(name, certsPEM, keyPEM string, now time.Time) (*Authority, error) {
	chain, err := certs.ParseChain([]byte(certsPEM))
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "A certificate of the issuing CA cannot be read: %v", err)
	}
	if len(chain) == 0 {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "certificates must hold the CA certificate in PEM.")
	}
	ca := chain[0]
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The first certificate (%s) is not a CA certificate.", ca.Subject)
	}
	if ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The CA certificate (%s) may not sign certificates (key usage).", ca.Subject)
	}
	if !now.IsZero() && !now.Before(ca.NotAfter) {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The CA certificate (%s) expired on %s.", ca.Subject, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	for i, c := range chain[1:] {
		if err := chain[i].CheckSignatureFrom(c); err != nil {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "Certificate %d (%s) did not sign the one before it: %v", i+2, c.Subject, err)
		}
	}
	// tls.X509KeyPair reads every PEM key encoding and checks the pair.
	pair, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), []byte(keyPEM))
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The private key cannot be read or is not the CA certificate's: %v", err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The private key cannot sign.")
	}
	return &Authority{Name: name, Cert: ca, Chain: chain[1:], Key: key}, nil
}

// Put stores the issuing CA name: certsPEM (the CA first, then its chain)
// and keyPEM. It reports whether the CA was created.
func (r *Registry) Put(ctx context.Context, name, certsPEM, keyPEM string) (*admin.IssuingCA, bool, error) {
	if !validName.MatchString(name) {
		return nil, false, dps.Errorf(dps.CodeInvalidArgument, "An issuing CA name is 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit.")
	}
	if strings.EqualFold(name, LocalName) {
		return nil, false, dps.Errorf(dps.CodeInvalidArgument, "The name %q is the local CA's.", LocalName)
	}
	a, err := parseAuthority(name, certsPEM, keyPEM, r.now())
	if err != nil {
		return nil, false, err
	}
	key, err := x509.MarshalPKCS8PrivateKey(a.Key)
	if err != nil {
		return nil, false, dps.Errorf(dps.CodeInvalidArgument, "The private key cannot be stored: %v", err)
	}
	var certs bytes.Buffer
	for _, c := range append([]*x509.Certificate{a.Cert}, a.Chain...) {
		_ = pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	d := doc{Name: name, Certificates: certs.String(), PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))}
	data, err := json.Marshal(d)
	if err != nil {
		return nil, false, fmt.Errorf("encode issuing CA: %w", err)
	}
	_, err = r.st.Get(ctx, Kind, strings.ToLower(name))
	created := errors.Is(err, store.ErrNotFound)
	if err != nil && !created {
		return nil, false, fmt.Errorf("read issuing CA %q: %w", name, err)
	}
	if created {
		if recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxAuthorities}); err == nil && len(recs) >= MaxAuthorities {
			return nil, false, dps.Errorf(dps.CodeInvalidArgument, "An instance keeps at most %d issuing CAs.", MaxAuthorities)
		}
	}
	rec, err := r.st.Put(ctx, store.Record{Kind: Kind, ID: strings.ToLower(name), Data: data}, store.Condition{})
	if err != nil {
		return nil, false, fmt.Errorf("store issuing CA %q: %w", name, err)
	}
	return view(a, &rec), created, nil
}

// Get returns the issuing CA name without its key.
func (r *Registry) Get(ctx context.Context, name string) (*admin.IssuingCA, error) {
	if strings.EqualFold(name, LocalName) && r.local != nil {
		return view(r.local, nil), nil
	}
	rec, err := r.st.Get(ctx, Kind, strings.ToLower(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, dps.Errorf(dps.CodeNotFound, "Issuing CA %q not found.", name)
	}
	if err != nil {
		return nil, fmt.Errorf("read issuing CA %q: %w", name, err)
	}
	return decodeView(rec)
}

func decodeView(rec store.Record) (*admin.IssuingCA, error) {
	var d doc
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return nil, fmt.Errorf("decode issuing CA %q: %w", rec.ID, err)
	}
	a, err := parseAuthority(d.Name, d.Certificates, d.PrivateKey, time.Time{})
	if err != nil {
		return nil, err
	}
	return view(a, &rec), nil
}

// List returns the local CA and every stored one.
func (r *Registry) List(ctx context.Context) ([]*admin.IssuingCA, error) {
	var out []*admin.IssuingCA
	if r.local != nil {
		out = append(out, view(r.local, nil))
	}
	recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxAuthorities})
	if err != nil {
		return nil, fmt.Errorf("list issuing CAs: %w", err)
	}
	for _, rec := range recs {
		v, err := decodeView(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Delete removes the issuing CA name. Certificates it issued stay valid on
// the hubs that trust it until they expire.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if strings.EqualFold(name, LocalName) {
		return dps.Errorf(dps.CodeInvalidArgument, "The local CA cannot be deleted.")
	}
	err := r.st.Delete(ctx, Kind, strings.ToLower(name), store.Condition{})
	if errors.Is(err, store.ErrNotFound) {
		return dps.Errorf(dps.CodeNotFound, "Issuing CA %q not found.", name)
	}
	return err
}

func view(a *Authority, rec *store.Record) *admin.IssuingCA {
	sum := sha256.Sum256(a.Cert.Raw)
	var certs bytes.Buffer
	for _, c := range append([]*x509.Certificate{a.Cert}, a.Chain...) {
		_ = pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	v := &admin.IssuingCA{
		Name: a.Name, Local: rec == nil,
		Subject: a.Cert.Subject.String(), Issuer: a.Cert.Issuer.String(),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(sum[:])),
		NotAfterUTC:      a.Cert.NotAfter.UTC(),
		Certificates:     certs.String(),
	}
	if rec != nil {
		v.ETag = rec.ETag
		c := rec.Created.UTC()
		v.CreatedUTC = &c
	}
	return v
}
