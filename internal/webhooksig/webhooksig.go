// Package webhooksig signs custom allocation webhook requests the Standard
// Webhooks way, so a webhook can tell dpsd's requests from anyone else's
// without a key in its URL:
//
//	webhook-id:        msg_<random>, the same for every attempt of one allocation
//	webhook-timestamp: Unix seconds of the attempt
//	webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// where key is the secret's bytes (the base64 after "whsec_"). During a
// rotation's overlap each request carries two signatures, separated by a
// space, one per secret, so a webhook that still has the old secret and
// one that has the new both accept it.
//
// dpsd keeps one secret per instance (Keeper), generated at first start,
// returned only when asked for.
package webhooksig

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// Header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Scheme names the signature scheme in admin.WebhookSigning.
const Scheme = "standard-webhooks-v1"

// SecretPrefix starts every secret.
const SecretPrefix = "whsec_"

// DefaultOverlap is how long the previous secret still signs after a
// rotation: time to roll the new one out to the webhooks.
const DefaultOverlap = 24 * time.Hour

// MaxOverlap bounds a rotation's overlap.
const MaxOverlap = 30 * 24 * time.Hour

// NewSecret returns a new random secret (32 bytes).
func NewSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("webhooksig: crypto/rand failed: " + err.Error())
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// NewID returns a new message id.
func NewID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("webhooksig: crypto/rand failed: " + err.Error())
	}
	return "msg_" + hex.EncodeToString(b[:])
}

func key(secret string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, SecretPrefix))
	if err != nil || len(k) == 0 {
		return nil, errors.New("webhooksig: a secret is whsec_ followed by base64")
	}
	return k, nil
}

// Signature returns the webhook-signature header value for one message,
// signed with each secret.
func Signature(secrets []string, id string, ts time.Time, body []byte) (string, error) {
	var sigs []string
	for _, s := range secrets {
		k, err := key(s)
		if err != nil {
			return "", err
		}
		sigs = append(sigs, "v1,"+sign(k, id, strconv.FormatInt(ts.Unix(), 10), body))
	}
	return strings.Join(sigs, " "), nil
}

func sign(k []byte, id, ts string, body []byte) string {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Verify checks a message as a webhook should: the timestamp within
// tolerance of now, and one of the v1 signatures made with secret.
func Verify(secret, id, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	k, err := key(secret)
	if err != nil {
		return err
	}
	if id == "" || timestamp == "" || signature == "" {
		return errors.New("webhooksig: the webhook-id, webhook-timestamp and webhook-signature headers are required")
	}
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return errors.New("webhooksig: webhook-timestamp is not Unix seconds")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhooksig: webhook-timestamp is too far from now")
	}
	want := sign(k, id, timestamp, body)
	for _, s := range strings.Fields(signature) {
		v, sig, ok := strings.Cut(s, ",")
		if ok && v == "v1" && hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return errors.New("webhooksig: no valid signature")
}

// recordID is the store record (KindConfig) that holds the secrets.
const recordID = "webhookSigning"

// stored is the record.
type stored struct {
	Secret        string    `json:"secret"`
	Created       time.Time `json:"created"`
	Previous      string    `json:"previous,omitempty"`
	PreviousUntil time.Time `json:"previousUntil,omitzero"`
}

// Keeper keeps the instance's signing secrets in a store shared by every
// node. It is safe for concurrent use.
type Keeper struct {
	st  store.Store
	now func() time.Time

	mu       sync.Mutex
	cached   *stored
	cachedAt time.Time
}

// cacheFor is how long a node signs with secrets it read without reading
// them again: a rotation on another node reaches it within that time,
// well inside any overlap.
const cacheFor = 5 * time.Second

// NewKeeper returns a keeper over st; now nil means time.Now.
func NewKeeper(st store.Store, now func() time.Time) *Keeper {
	if now == nil {
		now = time.Now
	}
	return &Keeper{st: st, now: now}
}

// load reads the secrets, creating the first one if there is none.
func (k *Keeper) load(ctx context.Context, fresh bool) (*stored, string, error) {
	k.mu.Lock()
	if !fresh && k.cached != nil && k.now().Sub(k.cachedAt) < cacheFor {
		c := k.cached
		k.mu.Unlock()
		return c, "", nil
	}
	k.mu.Unlock()
	for range 5 {
		rec, err := k.st.Get(ctx, store.KindConfig, recordID)
		if errors.Is(err, store.ErrNotFound) {
			s := &stored{Secret: NewSecret(), Created: k.now().UTC()}
			data, _ := json.Marshal(s)
			_, err = k.st.Put(ctx, store.Record{Kind: store.KindConfig, ID: recordID, Data: data}, store.Condition{MustNotExist: true})
			if errors.Is(err, store.ErrExists) {
				continue // another node made it first
			}
			if err != nil {
				return nil, "", fmt.Errorf("save webhook signing secret: %w", err)
			}
			continue // read it back, with its etag
		}
		if err != nil {
			return nil, "", fmt.Errorf("read webhook signing secret: %w", err)
		}
		var s stored
		if err := json.Unmarshal(rec.Data, &s); err != nil {
			return nil, "", fmt.Errorf("decode webhook signing secret: %w", err)
		}
		k.mu.Lock()
		k.cached, k.cachedAt = &s, k.now()
		k.mu.Unlock()
		return &s, rec.ETag, nil
	}
	return nil, "", errors.New("webhook signing secret: too many concurrent writers")
}

// Secrets returns the secrets requests are signed with now: the current
// one, and the previous one during a rotation's overlap.
func (k *Keeper) Secrets(ctx context.Context) ([]string, error) {
	s, _, err := k.load(ctx, false)
	if err != nil {
		return nil, err
	}
	out := []string{s.Secret}
	if s.Previous != "" && k.now().Before(s.PreviousUntil) {
		out = append(out, s.Previous)
	}
	return out, nil
}

// Get returns the signing settings; the secrets only when withSecrets.
func (k *Keeper) Get(ctx context.Context, withSecrets bool) (*admin.WebhookSigning, error) {
	s, _, err := k.load(ctx, true)
	if err != nil {
		return nil, err
	}
	return k.view(s, withSecrets), nil
}

func (k *Keeper) view(s *stored, withSecrets bool) *admin.WebhookSigning {
	v := &admin.WebhookSigning{Scheme: Scheme, CreatedDateTimeUTC: s.Created}
	if s.Previous != "" && k.now().Before(s.PreviousUntil) {
		until := s.PreviousUntil
		v.PreviousValidUntilUTC = &until
		if withSecrets {
			v.PreviousSecret = s.Previous
		}
	}
	if withSecrets {
		v.Secret = s.Secret
	}
	return v
}

// Rotate makes a new current secret; the old one goes on signing for
// overlap (0: DefaultOverlap; negative: not at all). It returns the new
// settings with both secrets.
func (k *Keeper) Rotate(ctx context.Context, overlap time.Duration) (*admin.WebhookSigning, error) {
	switch {
	case overlap == 0:
		overlap = DefaultOverlap
	case overlap > MaxOverlap:
		return nil, dps.Errorf(dps.CodeInvalidArgument, "An overlap of %v is longer than %v.", overlap, MaxOverlap)
	}
	for range 5 {
		s, etag, err := k.load(ctx, true)
		if err != nil {
			return nil, err
		}
		now := k.now().UTC()
		next := &stored{Secret: NewSecret(), Created: now}
		if overlap > 0 {
			next.Previous, next.PreviousUntil = s.Secret, now.Add(overlap)
		}
		data, _ := json.Marshal(next)
		_, err = k.st.Put(ctx, store.Record{Kind: store.KindConfig, ID: recordID, Data: data}, store.Condition{IfMatch: etag})
		if errors.Is(err, store.ErrPrecondition) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("save webhook signing secret: %w", err)
		}
		k.mu.Lock()
		k.cached, k.cachedAt = next, k.now()
		k.mu.Unlock()
		return k.view(next, true), nil
	}
	return nil, errors.New("webhook signing secret: too many concurrent writers")
}
