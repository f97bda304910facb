package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
)

const webhookSigningPath = "/dpsd/webhookSigning"

// newWebhookSecretCmd is "dpsd webhook-secret": the secret custom
// allocation webhook requests are signed with.
func newWebhookSecretCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhook-secret",
		Short: "Show or rotate the secret webhook requests are signed with (Standard Webhooks)",
		Long: `Every custom allocation webhook request carries the Standard Webhooks headers
webhook-id, webhook-timestamp and webhook-signature ("v1,<base64 HMAC-SHA256 of
id.timestamp.body>"), signed with this instance's secret. Give the secret to
your webhook (examples/contoso-allocator --secret) so it can refuse requests
that are not dpsd's. After a rotation, requests are signed with the new and the
old secret until the overlap ends, so webhooks can move over without failing
a registration.`,
		Args: cobra.NoArgs,
	}
	cf := addConnectFlags(cmd)
	out := addOutputFlag(cmd)
	wc := &clientCmd{conn: cf, out: out}

	var showSecrets bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the signing settings; the secret only with --show-secrets",
		Args:  cobra.NoArgs,
	}
	show.Flags().BoolVar(&showSecrets, "show-secrets", false, "include the secret (and the previous one during an overlap)")
	show.RunE = func(cmd *cobra.Command, _ []string) error {
		var q url.Values
		if showSecrets {
			q = url.Values{"includeSecrets": {"true"}}
		}
		return webhookSigning(cmd, wc, http.MethodGet, webhookSigningPath, q)
	}

	var overlap time.Duration
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new secret (printed); the old one signs too until the overlap ends",
		Args:  cobra.NoArgs,
	}
	rotate.Flags().DurationVar(&overlap, "overlap", 24*time.Hour, "how long requests are also signed with the old secret (0s: stop at once)")
	rotate.RunE = func(cmd *cobra.Command, _ []string) error {
		return webhookSigning(cmd, wc, http.MethodPost, webhookSigningPath+"/rotate", url.Values{"overlap": {overlap.String()}})
	}
	cmd.AddCommand(show, rotate)
	return cmd
}

func webhookSigning(cmd *cobra.Command, wc *clientCmd, method, path string, q url.Values) error {
	c, asJSON, err := wc.extSetup()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), extTimeout)
	defer cancel()
	var v admin.WebhookSigning
	if err := c.svc.Do(ctx, method, path, q, nil, &v, ""); err != nil {
		return fmt.Errorf("webhook signing secret: %w", err)
	}
	return printWebhookSigning(cmd.OutOrStdout(), asJSON, &v)
}

func printWebhookSigning(w io.Writer, asJSON bool, v *admin.WebhookSigning) error {
	if asJSON {
		return writeJSON(w, v)
	}
	created := v.CreatedDateTimeUTC
	return details(w, []field{
		{"Scheme", v.Scheme},
		{"Created", timeString(&created)},
		{"Secret", v.Secret},
		{"Previous secret valid until", timeString(v.PreviousValidUntilUTC)},
		{"Previous secret", v.PreviousSecret},
	})
}
