package serviceapi

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
)

// Authorizer checks service SAS tokens against the instance's shared access
// policies. The service API uses it, and so do dpsd's extension endpoints
// (built-in hubs, linked hubs) so that one token works for all of them.
type Authorizer struct {
	in    *instance.Instance
	hosts map[string]bool
	now   func() time.Time
}

// NewAuthorizer accepts tokens whose audience (sr) is one of hostNames,
// compared case-insensitively. now may be nil.
func NewAuthorizer(in *instance.Instance, hostNames []string, now func() time.Time) *Authorizer {
	a := &Authorizer{in: in, hosts: map[string]bool{}, now: now}
	if a.now == nil {
		a.now = time.Now
	}
	for _, n := range hostNames {
		if n = normalizeHost(n); n != "" {
			a.hosts[n] = true
		}
	}
	return a
}

// Authorize checks the request's token and that its policy grants right; the
// error is a *dps.Error (401000) that says what is wrong.
func (a *Authorizer) Authorize(r *http.Request, right instance.Right) error {
	p, err := a.authenticate(r)
	if err != nil {
		return err
	}
	return authorize(p, right)
}

// authenticate checks the request's SAS token and returns the policy that
// signed it. Every failure is a 401 with error code 401000; the message says
// what to fix without telling a caller which policy names exist.
func (a *Authorizer) authenticate(r *http.Request) (*instance.Policy, error) {
	header := r.Header.Get("Authorization")
	if header == "" {
		return nil, unauthorized("The request has no Authorization header; send a SharedAccessSignature token.")
	}
	tok, err := sas.Parse(header)
	if err != nil {
		return nil, unauthorized("The Authorization header is not a valid SharedAccessSignature token.")
	}
	if tok.ExpiredAt(a.now()) {
		return nil, unauthorized("The SharedAccessSignature token expired at " + time.Unix(tok.Expiry, 0).UTC().Format(time.RFC3339) + ".")
	}
	audience, err := tok.DecodedResource()
	if err != nil {
		return nil, unauthorized("The token's resource (sr) is not validly URL-encoded.")
	}
	// sr may be a resource URI under the host ("host/enrollments"); its
	// first segment is the audience.
	host, _, _ := strings.Cut(audience, "/")
	if !a.hosts[normalizeHost(host)] {
		return nil, unauthorized("The token's resource (sr) " + audience + " is not this service's host name.")
	}
	if tok.KeyName == "" {
		return nil, unauthorized("The token names no shared access policy (skn).")
	}
	p, ok := a.in.Policy(tok.KeyName)
	if !ok || !verify(tok, audience, p) {
		return nil, unauthorized("The token's signature does not match policy " + tok.KeyName + ".")
	}
	return p, nil
}

// verify checks the signature with the policy's primary and secondary keys.
// SDKs disagree on sr: npm and C sign the raw host, C# and the Azure CLI
// sign it URL-encoded, and some lower-case it. The HMAC is computed over sr
// exactly as sent first, then over its encoded-lower-case and decoded forms.
// Each comparison is constant time and every key is tried.
func verify(tok *sas.Token, decoded string, p *instance.Policy) bool {
	var keys [][]byte
	for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
		if b, err := base64.StdEncoding.DecodeString(k); err == nil && len(b) > 0 {
			keys = append(keys, b)
		}
	}
	if len(keys) == 0 {
		return false
	}
	candidates := []string{tok.Resource, url.QueryEscape(strings.ToLower(decoded)), decoded}
	for i, c := range candidates {
		if i > 0 && c == tok.Resource {
			continue
		}
		t := *tok
		t.Resource = c
		if t.VerifyAny(keys...) >= 0 {
			return true
		}
	}
	return false
}

// authorize checks that the policy grants right. A policy without the right
// is refused with 401 (401000), not 403: Azure's hubs answer missing rights
// with 401, the SDKs classify 401 as an authorization error, and the npm
// client would turn a 403 into a misleading TooManyDevicesError.
func authorize(p *instance.Policy, right instance.Right) error {
	if p.Has(right) {
		return nil
	}
	return unauthorized("The shared access policy " + p.KeyName + " does not grant " + string(right) + ", which this operation needs.")
}

func unauthorized(msg string) *dps.Error {
	return dps.Errorf(dps.CodeUnauthorized, "%s", msg)
}
