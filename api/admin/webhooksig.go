package admin

import "time"

// WebhookSigning is the body of GET /dpsd/webhookSigning and of POST
// /dpsd/webhookSigning/rotate: the secret dpsd signs custom allocation
// webhook requests with (Standard Webhooks: webhook-id, webhook-timestamp,
// webhook-signature "v1,<base64 HMAC-SHA256>"). The secrets are present
// only when asked for (?includeSecrets=true) and in the answer to a
// rotation.
type WebhookSigning struct {
	// Scheme names the signature scheme: "standard-webhooks-v1".
	Scheme             string    `json:"scheme"`
	CreatedDateTimeUTC time.Time `json:"createdDateTimeUtc"`
	// Secret is the current secret, "whsec_" and base64.
	Secret string `json:"secret,omitempty"`
	// PreviousValidUntilUTC, when set, is until when requests are also
	// signed with the previous secret (the rotation's overlap).
	PreviousValidUntilUTC *time.Time `json:"previousValidUntilUtc,omitempty"`
	PreviousSecret        string     `json:"previousSecret,omitempty"`
}
