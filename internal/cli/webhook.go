package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
)

const webhookTestPath = "/dpsd/webhookTest"

// newWebhookCmd is "dpsd webhook": trying a custom allocation.
func newWebhookCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Try custom allocation webhooks and policies",
		Args:  cobra.NoArgs,
	}
	cf := addConnectFlags(cmd)
	out := addOutputFlag(cmd)
	cc := &clientCmd{conn: cf, out: out}

	var req admin.WebhookTestRequest
	var payload string
	test := &cobra.Command{
		Use:   "test (--enrollment-group-id G | --enrollment-id E) --registration-id R [--payload JSON]",
		Short: "Send the request dpsd would send for a device (or evaluate its policy) without registering it",
		Long: `Build exactly the allocation request a registration of this device would
send — its enrollment without keys, its current hub, its payload, the linked
hubs — send it once, signed, to the enrollment's webhook (or evaluate its
policy:NAME), and print the request, the answer, the latency and the row of
Azure's custom allocation outcome table the answer falls in (assigned to a
hub with this twin, 400207, 400208, 400209, 400210, or retried). Nothing is
registered and nothing is written to the allocation log. The exit status is
0 when the device would be assigned, 1 otherwise.`,
		Args: cobra.NoArgs,
	}
	f := test.Flags()
	f.StringVar(&req.EnrollmentGroupID, "enrollment-group-id", "", "the enrollment group the device belongs to")
	f.StringVar(&req.EnrollmentID, "enrollment-id", "", "the individual enrollment (its registration id)")
	f.StringVar(&req.RegistrationID, "registration-id", "", "the device's registration id (with --enrollment-id, defaults to it)")
	f.StringVar(&payload, "payload", "", "the custom JSON payload the device would send")
	test.RunE = func(cmd *cobra.Command, _ []string) error {
		if (req.EnrollmentGroupID == "") == (req.EnrollmentID == "") {
			return errors.New("give exactly one of --enrollment-group-id and --enrollment-id")
		}
		if req.RegistrationID == "" {
			req.RegistrationID = req.EnrollmentID
		}
		if req.RegistrationID == "" {
			return errors.New("--registration-id is required")
		}
		if payload != "" {
			if !json.Valid([]byte(payload)) {
				return errors.New("--payload is not valid JSON")
			}
			req.Payload = json.RawMessage(payload)
		}
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), extTimeout)
		defer cancel()
		var res admin.WebhookTestResult
		if err := c.svc.Do(ctx, http.MethodPost, webhookTestPath, nil, &req, &res, ""); err != nil {
			return fmt.Errorf("webhook test: %w", err)
		}
		if err := printWebhookTest(cmd.OutOrStdout(), asJSON, &res); err != nil {
			return err
		}
		if res.Outcome != admin.OutcomeAssigned {
			return &exitError{code: 1}
		}
		return nil
	}
	cmd.AddCommand(test)
	return cmd
}

func printWebhookTest(w io.Writer, asJSON bool, r *admin.WebhookTestResult) error {
	if asJSON {
		return writeJSON(w, r)
	}
	status := ""
	if r.Status != 0 {
		status = strconv.Itoa(r.Status)
	}
	answer := compactJSON(r.Answer)
	if r.WebhookText != "" {
		answer = "webhook text: " + strconv.Quote(r.WebhookText)
	}
	errText := ""
	if r.ErrorCode != 0 {
		errText = fmt.Sprintf("%d: %s", r.ErrorCode, r.ErrorMessage)
	}
	return details(w, []field{
		{"Allocation policy", r.AllocationPolicy},
		{"Webhook", r.WebhookURL},
		{"Request", compactJSON(r.Request)},
		{"Status", status},
		{"Answer", answer},
		{"Why", r.Error},
		{"Latency", strconv.FormatFloat(r.LatencyMs, 'f', 2, 64) + " ms"},
		{"Outcome", r.Row},
		{"Device would get", errText},
		{"Initial twin", compactJSON(r.InitialTwin)},
		{"Payload", compactJSON(r.Payload)},
	})
}
