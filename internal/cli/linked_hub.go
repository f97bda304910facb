package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/linkedhub"
)

// Paths of dpsd's extension API (not part of Azure's service API).
const (
	linkedHubsPath = "/dpsd/linkedHubs"
	registrations  = "/dpsd/registrations/"
)

// newLinkedHubCmd is "dpsd linked-hub": the IoT hubs linked to the
// service, shaped like "az iot dps linked-hub".
//
// Its --connection-string is the hub's connection string (as in az), so
// the service's connection string is given here as --dps-connection-string
// (or DPSD_CONNECTION_STRING, or found through --data-dir as usual).
func newLinkedHubCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "linked-hub",
		Short: "Manage the IoT hubs linked to the provisioning service",
		Args:  cobra.NoArgs,
	}
	cf := &connectFlags{}
	fs := cmd.PersistentFlags()
	fs.StringVar(&cf.connectionString, "dps-connection-string", "",
		"service connection string of dpsd (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...); env "+envConnectionString)
	fs.StringVar(&cf.dataDir, "data-dir", "",
		"data directory of a local dpsd, whose info.json names the service, its CA and address; env "+envDataDir+" (default "+defaultDataDir+")")
	fs.StringVar(&cf.caFile, "ca-file", "", "PEM file of a CA certificate to trust for the service's TLS")
	out := addOutputFlag(cmd)
	lc := &linkedHubCmd{&clientCmd{conn: cf, out: out}}
	cmd.AddCommand(lc.create(), lc.list(), lc.show(), lc.update(), lc.delete(), lc.rotateKey())
	for _, sub := range cmd.Commands() {
		if sub.Name() != "create" && sub.Name() != "list" {
			sub.ValidArgsFunction = completeOnce(completeFrom(lc.clientCmd, linkedHubNames))
			_ = sub.RegisterFlagCompletionFunc("linked-hub", completeFrom(lc.clientCmd, linkedHubNames))
		}
	}
	return cmd
}

// linkedHubCmd builds the "dpsd linked-hub" subcommands.
type linkedHubCmd struct{ *clientCmd }

// hubFlags are the settable members of a linked hub.
type hubFlags struct {
	connectionString string
	weight           int
	apply            bool
	location         string
	caFile           string
}

func addHubFlags(cmd *cobra.Command, hf *hubFlags, csHelp string) {
	f := cmd.Flags()
	f.StringVar(&hf.connectionString, "connection-string", "", csHelp)
	f.IntVar(&hf.weight, "allocation-weight", linkedhub.DefaultWeight,
		fmt.Sprintf("allocation weight, %d–%d: hashed allocation gives the hub this share of devices", linkedhub.MinWeight, linkedhub.MaxWeight))
	f.BoolVar(&hf.apply, "apply-allocation-policy", true, "whether allocation assigns devices to the hub when enrollments name no hubs")
	f.StringVar(&hf.location, "location", "", "the hub's location (used by geoLatency allocation)")
	f.StringVar(&hf.caFile, "hub-ca-file", "", "PEM file of the CAs that issued the hub's TLS certificate, for a hub with a private certificate (trusted instead of the system roots); \"\" on update removes it")
}

// definition sends only the flags given on the command line, so an update
// keeps what is not mentioned.
func (hf *hubFlags) definition(cmd *cobra.Command) (admin.LinkedHubDefinition, error) {
	var d admin.LinkedHubDefinition
	f := cmd.Flags()
	if f.Changed("hub-ca-file") {
		bundle := ""
		if hf.caFile != "" {
			b, err := os.ReadFile(hf.caFile)
			if err != nil {
				return d, fmt.Errorf("--hub-ca-file: %w", err)
			}
			bundle = string(b)
		}
		d.CACertificates = &bundle
	}
	if f.Changed("connection-string") {
		d.ConnectionString = hf.connectionString
	}
	if f.Changed("allocation-weight") {
		d.AllocationWeight = &hf.weight
	}
	if f.Changed("apply-allocation-policy") {
		d.ApplyAllocationPolicy = &hf.apply
	}
	if f.Changed("location") {
		d.Location = &hf.location
	}
	return d, nil
}

func (lc *linkedHubCmd) create() *cobra.Command {
	var hf hubFlags
	cmd := &cobra.Command{
		Use:   "create --connection-string CS",
		Short: "Link an IoT hub by its connection string; its name is the connection string's host name",
		Args:  cobra.NoArgs,
	}
	addHubFlags(cmd, &hf, "the IoT hub's connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...)")
	_ = cmd.MarkFlagRequired("connection-string")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		def, err := hf.definition(cmd)
		if err != nil {
			return err
		}
		c, asJSON, err := lc.extSetup()
		if err != nil {
			return err
		}
		var h admin.LinkedHub
		if err := c.do(cmd.Context(), "link hub", http.MethodPost, linkedHubsPath, def, &h, ""); err != nil {
			return err
		}
		return printLinkedHub(cmd.OutOrStdout(), asJSON, &h)
	}
	return cmd
}

func (lc *linkedHubCmd) list() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the linked IoT hubs",
		Args:  cobra.NoArgs,
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := lc.extSetup()
		if err != nil {
			return err
		}
		var hubs []admin.LinkedHub
		if err := c.do(cmd.Context(), "list linked hubs", http.MethodGet, linkedHubsPath, nil, &hubs, ""); err != nil {
			return err
		}
		return printLinkedHubs(cmd.OutOrStdout(), asJSON, hubs)
	}
	return cmd
}

func (lc *linkedHubCmd) show() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a linked IoT hub (NAME is its host name)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, asJSON, err := lc.extSetup()
		if err != nil {
			return err
		}
		var h admin.LinkedHub
		if err := c.do(cmd.Context(), fmt.Sprintf("show linked hub %q", args[0]), http.MethodGet, hubPath(args[0]), nil, &h, ""); err != nil {
			return err
		}
		return printLinkedHub(cmd.OutOrStdout(), asJSON, &h)
	}
	nameFlag(cmd, "linked-hub", "", "the linked hub's host name, instead of NAME (as az)")
	return cmd
}

func (lc *linkedHubCmd) update() *cobra.Command {
	var hf hubFlags
	var etag string
	cmd := &cobra.Command{
		Use:   "update NAME [flags]",
		Short: "Change a linked IoT hub's weight, policy flag, location or connection string",
		Args:  cobra.ExactArgs(1),
	}
	addHubFlags(cmd, &hf, "a new connection string for the same hub (a rotated key)")
	cmd.Flags().StringVar(&etag, "etag", "", "update only if the hub still has this etag")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		def, err := hf.definition(cmd)
		if err != nil {
			return err
		}
		if def == (admin.LinkedHubDefinition{}) {
			return errors.New("nothing to update: give --connection-string, --allocation-weight, --apply-allocation-policy, --location or --hub-ca-file")
		}
		c, asJSON, err := lc.extSetup()
		if err != nil {
			return err
		}
		var h admin.LinkedHub
		if err := c.do(cmd.Context(), fmt.Sprintf("update linked hub %q", args[0]), http.MethodPatch, hubPath(args[0]), def, &h, etag); err != nil {
			return err
		}
		return printLinkedHub(cmd.OutOrStdout(), asJSON, &h)
	}
	nameFlag(cmd, "linked-hub", "", "the linked hub's host name, instead of NAME (as az)")
	return cmd
}

func (lc *linkedHubCmd) delete() *cobra.Command {
	var etag string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Unlink an IoT hub (its devices stay in it)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the hub still has this etag")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, _, err := lc.extSetup()
		if err != nil {
			return err
		}
		return c.do(cmd.Context(), fmt.Sprintf("delete linked hub %q", args[0]), http.MethodDelete, hubPath(args[0]), nil, nil, etag)
	}
	nameFlag(cmd, "linked-hub", "", "the linked hub's host name, instead of NAME (as az)")
	return cmd
}

func (lc *linkedHubCmd) rotateKey() *cobra.Command {
	var rot admin.LinkedHubKeyRotation
	var etag string
	cmd := &cobra.Command{
		Use:   "rotate-key NAME --connection-string CS",
		Short: "Replace a linked hub's key in place, after checking the hub accepts the new one",
		Long: `Replace the connection string dpsd uses for a linked hub with one that holds
the hub's new (or other) key, without unlinking the hub: its weight, location,
CA bundle and the enrollments naming it stay as they are. dpsd first checks
that the hub accepts the new key (a registry statistics call, or the built-in
hub's own policies) and keeps the old one if it does not. The usual rotation:
switch to the secondary key, regenerate the primary in the hub, switch back.`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&rot.ConnectionString, "connection-string", "", "the hub's connection string with the new key (same host name)")
	f.BoolVar(&rot.SkipCheck, "skip-check", false, "save the new key without checking it against the hub (a hub that is down)")
	f.StringVar(&etag, "etag", "", "rotate only if the hub still has this etag")
	_ = cmd.MarkFlagRequired("connection-string")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, asJSON, err := lc.extSetup()
		if err != nil {
			return err
		}
		var h admin.LinkedHub
		if err := c.do(cmd.Context(), fmt.Sprintf("rotate the key of linked hub %q", args[0]), http.MethodPost, hubPath(args[0])+"/rotateKey", rot, &h, etag); err != nil {
			return err
		}
		return printLinkedHub(cmd.OutOrStdout(), asJSON, &h)
	}
	nameFlag(cmd, "linked-hub", "", "the linked hub's host name, instead of NAME (as az)")
	return cmd
}

func hubPath(name string) string { return linkedHubsPath + "/" + url.PathEscape(name) }

// printLinkedHub prints one linked hub; the service already redacted its key.
func printLinkedHub(w io.Writer, asJSON bool, h *admin.LinkedHub) error {
	if asJSON {
		return writeJSON(w, h)
	}
	return details(w, []field{
		{"Name", h.Name},
		{"Connection string", h.ConnectionString},
		{"Allocation weight", strconv.Itoa(h.AllocationWeight)},
		{"Apply allocation policy", boolString(h.ApplyAllocationPolicy)},
		{"Location", h.Location},
		{"CA certificates", caSummary(h.CACertificates)},
		{"Health", healthString(h.Health)},
		{"ETag", h.ETag},
		{"Created", timeString(h.CreatedDateTimeUTC)},
		{"Last updated", timeString(h.LastUpdatedDateTimeUTC)},
	})
}

func printLinkedHubs(w io.Writer, asJSON bool, hubs []admin.LinkedHub) error {
	if asJSON {
		return writeJSON(w, nonNil(hubs))
	}
	rows := make([][]string, 0, len(hubs))
	for _, h := range hubs {
		health := ""
		if h.Health != nil {
			health = h.Health.State
		}
		rows = append(rows, []string{h.Name, strconv.Itoa(h.AllocationWeight), boolString(h.ApplyAllocationPolicy), h.Location, health})
	}
	return table(w, []string{"NAME", "ALLOCATION WEIGHT", "APPLY ALLOCATION POLICY", "LOCATION", "HEALTH"}, rows)
}

// healthString says what the node's checks found, in one line.
func healthString(h *admin.LinkedHubHealth) string {
	if h == nil {
		return "not checked (health checks are off)"
	}
	s := h.State
	if !h.Since.IsZero() {
		s += " since " + h.Since.UTC().Format(time.RFC3339)
	}
	if !h.LastCheck.IsZero() {
		s += fmt.Sprintf("; last check %s, %d ms", h.LastCheck.UTC().Format(time.RFC3339), h.LatencyMs)
	}
	if h.ConsecutiveFailures > 0 {
		s += fmt.Sprintf("; %d failed in a row: %s", h.ConsecutiveFailures, h.LastError)
	}
	return s
}

// caSummary names the certificates of a CA bundle, or the system roots.
func caSummary(bundle string) string {
	if bundle == "" {
		return "system roots"
	}
	var names []string
	rest := []byte(bundle)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			names = append(names, c.Subject.String())
		}
	}
	return strings.Join(names, "; ")
}

// fetchAllocationLog reads a registration's custom allocation audit trail,
// for "dpsd registration show --allocation-log".
func fetchAllocationLog(ctx context.Context, c extClient, registrationID string) (*admin.AllocationLog, error) {
	var r admin.AllocationLog
	err := c.do(ctx, fmt.Sprintf("get allocation log of %q", registrationID), http.MethodGet,
		registrations+url.PathEscape(registrationID)+"/allocationLog", nil, &r, "")
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// printAllocationLog prints an allocation log: one block per allocation,
// one line per webhook attempt.
func printAllocationLog(w io.Writer, asJSON bool, r *admin.AllocationLog) error {
	if asJSON {
		return writeJSON(w, r)
	}
	if len(r.Entries) == 0 {
		_, err := fmt.Fprintf(w, "No allocations recorded for %s.\n", r.RegistrationID)
		return err
	}
	for i, e := range r.Entries {
		if i > 0 {
			fmt.Fprintln(w)
		}
		outcome := e.Outcome
		switch {
		case e.Hub != "":
			outcome += " to " + e.Hub
		case e.ErrorCode != 0:
			outcome += fmt.Sprintf(" (%d: %s)", e.ErrorCode, e.ErrorMessage)
		}
		cands := make([]string, 0, len(e.Candidates))
		for _, c := range e.Candidates {
			s := fmt.Sprintf("%s (weight %d", c.Name, c.AllocationWeight)
			if c.Location != "" {
				s += ", " + c.Location
			}
			cands = append(cands, s+")")
		}
		if err := details(w, []field{
			{"Allocation", e.ID},
			{"Started", e.Started.UTC().Format(time.RFC3339)},
			{"Policy", e.AllocationPolicy},
			{"Candidates", strings.Join(cands, ", ")},
			{"Why", e.Reason},
			{"Previous hub", e.PreviousHub},
			{"Reprovisioning", e.Reprovision},
			{"Webhook", e.WebhookURL},
			{"Outcome", outcome},
			{"Retries", strconv.Itoa(e.Retries)},
			{"Took", (time.Duration(e.DurationMs) * time.Millisecond).String()},
			{"Request", compactJSON(e.Request)},
		}); err != nil {
			return err
		}
		rows := make([][]string, 0, len(e.Attempts))
		for n, a := range e.Attempts {
			status := a.Error
			if a.Status != 0 {
				status = strconv.Itoa(a.Status)
			}
			wait := ""
			if a.RetryAfterMs > 0 {
				wait = (time.Duration(a.RetryAfterMs) * time.Millisecond).String()
			}
			body := compactJSON(a.Body)
			if a.WebhookText != "" {
				// Marked as the webhook's words, not dpsd's.
				body = "webhook text: " + strconv.Quote(a.WebhookText)
			}
			if len(body) > 120 {
				body = body[:117] + "..."
			}
			rows = append(rows, []string{strconv.Itoa(n + 1), status, (time.Duration(a.DurationMs) * time.Millisecond).String(), wait, body})
		}
		if len(rows) > 0 {
			if err := table(w, []string{"ATTEMPT", "STATUS", "TOOK", "RETRY AFTER", "ANSWER"}, rows); err != nil {
				return err
			}
		}
	}
	return nil
}

// extClient calls dpsd's extension API (paths under /dpsd/), which the
// Azure-shaped methods of service.Client do not cover, through the same
// client and so with the same authentication and ways of finding the service.
type extClient struct{ svc *service.Client }

// extSetup validates the output format and connects for the extension API.
func (cc *clientCmd) extSetup() (extClient, bool, error) {
	c, asJSON, err := cc.setup()
	return extClient{c}, asJSON, err
}

// extClient connects as the other client commands do.
func (cf *connectFlags) extClient() (extClient, error) {
	c, err := cf.client()
	return extClient{c}, err
}

// extTimeout bounds one extension call, so a service that accepts the
// connection but never answers does not hang the command.
const extTimeout = 2 * time.Minute

// do sends one request; body is JSON-encoded when not nil, out is decoded
// from the answer when not nil, and etag, when not empty, is sent as
// If-Match. Service errors come back as *dps.Error wrapped with op.
func (c extClient) do(ctx context.Context, op, method, path string, body, out any, etag string) error {
	ctx, cancel := context.WithTimeout(ctx, extTimeout)
	defer cancel()
	if err := c.svc.Do(ctx, method, path, nil, body, out, etag); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
