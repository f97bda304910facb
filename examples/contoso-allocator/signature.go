package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Verifying dpsd's signature (Standard Webhooks), written out so it can be
// copied: dpsd signs every request with its instance secret ("dpsd
// webhook-secret show --show-secrets" prints it, "whsec_" and base64):
//
//	webhook-id:        msg_…, the same for each retry of one allocation
//	webhook-timestamp: Unix seconds
//	webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// key is the base64-decoded part after "whsec_". During a secret rotation
// the header holds two signatures separated by a space; either will do.

// maxClockSkew is how far webhook-timestamp may be from this clock: a
// request replayed later than that is refused.
const maxClockSkew = 5 * time.Minute

// verifySignature checks r's headers against body with secret.
func verifySignature(secret string, h http.Header, body []byte, now time.Time) error {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return errors.New("the configured secret is not whsec_ followed by base64")
	}
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("unsigned request")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad webhook-timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > maxClockSkew || d < -maxClockSkew {
		return errors.New("webhook-timestamp too far from now (a replay?)")
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, s := range strings.Fields(sigs) {
		if v, sig, ok := strings.Cut(s, ","); ok && v == "v1" && hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return errors.New("no valid signature")
}
