package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/dps"
)

// Output formats of the client commands, as az names them.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatJSONC = "jsonc" // JSON with colours
	formatTSV   = "tsv"
	formatYAML  = "yaml"
	formatNone  = "none"
)

var formats = []string{formatTable, formatJSON, formatJSONC, formatTSV, formatYAML, formatNone}

// outputFlags holds -o/--output and --query.
type outputFlags struct {
	format string
	query  string
}

// addOutputFlag registers -o/--output and --query as persistent flags of
// cmd, and makes its subcommands' structured output follow them.
func addOutputFlag(cmd *cobra.Command) *outputFlags {
	of := &outputFlags{}
	cmd.PersistentFlags().StringVarP(&of.format, "output", "o", formatTable,
		"output format: table (for people), json, jsonc (coloured), tsv, yaml or none")
	cmd.PersistentFlags().StringVar(&of.query, "query", "",
		"JMESPath query applied to the JSON output, as az's --query (e.g. \"[?provisioningStatus=='enabled'].registrationId\")")
	prev := cmd.PersistentPreRunE
	cmd.PersistentPreRunE = func(c *cobra.Command, args []string) error {
		if prev != nil {
			if err := prev(c, args); err != nil {
				return err
			}
		}
		if _, err := of.json(); err != nil {
			return err
		}
		f := strings.ToLower(of.format)
		if f == formatTable && of.query == "" {
			return nil
		}
		q, err := compileQuery(of.query)
		if err != nil {
			return err
		}
		c.SetOut(&formatWriter{w: c.OutOrStdout(), format: f, query: q})
		return nil
	}
	return of
}

// json reports whether structured output was asked for (any format but
// table, or a query), rejecting unknown formats. The printers then hand
// their value to writeJSON, which renders the format.
func (of *outputFlags) json() (bool, error) {
	f := strings.ToLower(of.format)
	if f == "" {
		f = formatTable
	}
	if !slices.Contains(formats, f) {
		return false, fmt.Errorf("unknown output format %q (want %s)", of.format, strings.Join(formats, ", "))
	}
	return f != formatTable || of.query != "", nil
}

// writeJSON prints v as indented JSON, the objects exactly as the service
// API returned them; through a formatWriter (-o and --query), in the
// format asked, after the query.
func writeJSON(w io.Writer, v any) error {
	if fw, ok := w.(*formatWriter); ok {
		return fw.render(v)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table prints rows under a header, aligned in columns; empty cells read "-".
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = cell(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// cell makes s fit one table cell: never empty, never multi-line, never
// a terminal control sequence.
func cell(s string) string {
	s = printable(strings.Join(strings.Fields(s), " "))
	if s == "" {
		return "-"
	}
	return s
}

// printable escapes what a terminal would act on rather than show:
// control characters (an ESC sequence stored in a registration by a
// webhook or a device could rewrite the screen or the window title) and
// bytes that are not UTF-8, as Go escapes (\x1b, \u009b, \xff).
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r) // '\x1b', '\n', '\u009b'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// field is one line of a detail view.
type field struct{ name, value string }

// details prints name/value lines, leaving out empty values.
func details(w io.Writer, fields []field) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range fields {
		if f.value != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", f.name, printable(f.value))
		}
	}
	return tw.Flush()
}

// attestationSummary names an attestation in a few characters.
func attestationSummary(a *dps.AttestationMechanism) string {
	if a == nil {
		return ""
	}
	if a.Type == dps.AttestationX509 && a.X509 != nil {
		switch {
		case a.X509.ClientCertificates != nil:
			return "x509 (client certificate)"
		case a.X509.SigningCertificates != nil:
			return "x509 (signing certificate)"
		case a.X509.CAReferences != nil:
			return "x509 (CA reference)"
		}
	}
	return a.Type
}

// reprovisionName is the CLI's name of a reprovision policy.
func reprovisionName(p *dps.ReprovisionPolicy) string {
	switch {
	case p == nil:
		return ""
	case !p.UpdateHubAssignment:
		return "never"
	case p.MigrateDeviceData:
		return "reprovisionandmigratedata"
	default:
		return "reprovisionandresetdata"
	}
}

func timeString(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// compactJSON shows a JSON value on one line.
func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

func boolString(b bool) string { return strconv.FormatBool(b) }

// commonFields are the detail lines individual enrollments and groups share.
func commonFields(a *dps.AttestationMechanism, status, policy string, hubs []string,
	custom *dps.CustomAllocationDefinition, twin *dps.InitialTwin, rp *dps.ReprovisionPolicy,
	caps *dps.DeviceCapabilities) []field {
	fs := []field{{"Attestation", attestationSummary(a)}}
	if a != nil && a.SymmetricKey != nil {
		fs = append(fs, field{"Primary key", a.SymmetricKey.PrimaryKey}, field{"Secondary key", a.SymmetricKey.SecondaryKey})
	}
	if a != nil && a.X509 != nil {
		for _, c := range []*dps.X509Certificates{a.X509.ClientCertificates, a.X509.SigningCertificates} {
			if c == nil {
				continue
			}
			fs = append(fs, field{"Primary certificate", certSummary(c.Primary)}, field{"Secondary certificate", certSummary(c.Secondary)})
		}
		if r := a.X509.CAReferences; r != nil {
			fs = append(fs, field{"Primary CA", r.Primary}, field{"Secondary CA", r.Secondary})
		}
	}
	if a != nil && a.TPM != nil {
		fs = append(fs, field{"Endorsement key", a.TPM.EndorsementKey})
	}
	fs = append(fs,
		field{"Provisioning status", status},
		field{"Allocation policy", policy},
		field{"IoT hubs", strings.Join(hubs, ", ")},
	)
	if custom != nil {
		fs = append(fs, field{"Webhook URL", custom.WebhookURL}, field{"Webhook API version", custom.APIVersion})
	}
	if twin != nil {
		fs = append(fs, field{"Initial twin tags", compactJSON(twin.Tags)})
		if twin.Properties != nil {
			fs = append(fs, field{"Initial twin desired", compactJSON(twin.Properties.Desired)})
		}
	}
	fs = append(fs, field{"Reprovision policy", reprovisionName(rp)})
	if caps != nil {
		fs = append(fs, field{"Edge enabled", boolString(caps.IoTEdge)})
	}
	return fs
}

func certSummary(c *dps.X509CertificateWithInfo) string {
	switch {
	case c == nil:
		return ""
	case c.Info != nil:
		return fmt.Sprintf("%s (SHA-256 %s, expires %s)", c.Info.SubjectName, c.Info.SHA256Thumbprint,
			c.Info.NotAfterUTC.UTC().Format(time.DateOnly))
	case c.Certificate != "":
		return "(certificate given, no info)"
	}
	return ""
}

// printEnrollment prints one individual enrollment.
func printEnrollment(w io.Writer, asJSON bool, e *dps.IndividualEnrollment) error {
	if asJSON {
		return writeJSON(w, e)
	}
	fs := []field{{"Registration ID", e.RegistrationID}, {"Device ID", e.DeviceID}}
	fs = append(fs, commonFields(e.Attestation, e.ProvisioningStatus, e.AllocationPolicy, e.IoTHubs,
		e.CustomAllocationDefinition, e.InitialTwin, e.ReprovisionPolicy, e.Capabilities)...)
	fs = append(fs, field{"IoT hub host name", e.IoTHubHostName}, field{"Device information", compactJSON(e.OptionalDeviceInformation)})
	if r := e.RegistrationState; r != nil {
		fs = append(fs, field{"Registration status", r.Status}, field{"Assigned hub", r.AssignedHub})
	}
	fs = append(fs, field{"ETag", e.ETag}, field{"Created", timeString(e.CreatedDateTimeUTC)},
		field{"Last updated", timeString(e.LastUpdatedDateTimeUTC)})
	return details(w, fs)
}

// printEnrollmentGroup prints one enrollment group.
func printEnrollmentGroup(w io.Writer, asJSON bool, g *dps.EnrollmentGroup) error {
	if asJSON {
		return writeJSON(w, g)
	}
	fs := []field{{"Enrollment group ID", g.EnrollmentGroupID}}
	fs = append(fs, commonFields(g.Attestation, g.ProvisioningStatus, g.AllocationPolicy, g.IoTHubs,
		g.CustomAllocationDefinition, g.InitialTwin, g.ReprovisionPolicy, g.Capabilities)...)
	fs = append(fs, field{"IoT hub host name", g.IoTHubHostName}, field{"ETag", g.ETag},
		field{"Created", timeString(g.CreatedDateTimeUTC)}, field{"Last updated", timeString(g.LastUpdatedDateTimeUTC)})
	return details(w, fs)
}

// printRegistration prints one device registration state.
func printRegistration(w io.Writer, asJSON bool, r *dps.DeviceRegistrationState) error {
	if asJSON {
		return writeJSON(w, r)
	}
	fs := []field{
		{"Registration ID", r.RegistrationID},
		{"Status", r.Status},
		{"Substatus", r.Substatus},
		{"Assigned hub", r.AssignedHub},
		{"Device ID", r.DeviceID},
	}
	if r.ErrorCode != 0 {
		fs = append(fs, field{"Error code", strconv.Itoa(r.ErrorCode)})
	}
	if r.SymmetricKey != nil {
		fs = append(fs, field{"Enrollment group ID", r.SymmetricKey.EnrollmentGroupID})
	} else if r.X509 != nil {
		fs = append(fs, field{"Enrollment group ID", r.X509.EnrollmentGroupID})
	}
	if ic := r.IssuedCertificate; ic != nil {
		fs = append(fs,
			field{"Issued certificate serial", ic.SerialNumber},
			field{"Issued certificate SHA-256", ic.SHA256Thumbprint},
			field{"Issued certificate valid", ic.NotBeforeUTC.Format(time.RFC3339) + " to " + ic.NotAfterUTC.Format(time.RFC3339)},
			field{"Issuing CA", ic.CertificateAuthorityName})
	}
	fs = append(fs,
		field{"Error message", r.ErrorMessage},
		field{"Payload", compactJSON(r.Payload)},
		field{"ETag", r.ETag},
		field{"Created", timeString(r.CreatedDateTimeUTC)},
		field{"Last updated", timeString(r.LastUpdatedDateTimeUTC)},
	)
	return details(w, fs)
}

// printEnrollments prints a list of individual enrollments.
func printEnrollments(w io.Writer, asJSON bool, list []dps.IndividualEnrollment) error {
	if asJSON {
		return writeJSON(w, nonNil(list))
	}
	rows := make([][]string, 0, len(list))
	for _, e := range list {
		rows = append(rows, []string{e.RegistrationID, e.DeviceID, attestationSummary(e.Attestation),
			e.ProvisioningStatus, e.AllocationPolicy, strings.Join(e.IoTHubs, ","), e.ETag})
	}
	return table(w, []string{"REGISTRATION ID", "DEVICE ID", "ATTESTATION", "STATUS", "ALLOCATION", "IOT HUBS", "ETAG"}, rows)
}

// printEnrollmentGroups prints a list of enrollment groups.
func printEnrollmentGroups(w io.Writer, asJSON bool, list []dps.EnrollmentGroup) error {
	if asJSON {
		return writeJSON(w, nonNil(list))
	}
	rows := make([][]string, 0, len(list))
	for _, g := range list {
		rows = append(rows, []string{g.EnrollmentGroupID, attestationSummary(g.Attestation),
			g.ProvisioningStatus, g.AllocationPolicy, strings.Join(g.IoTHubs, ","), g.ETag})
	}
	return table(w, []string{"ENROLLMENT GROUP ID", "ATTESTATION", "STATUS", "ALLOCATION", "IOT HUBS", "ETAG"}, rows)
}

// printRegistrations prints a list of registration states.
func printRegistrations(w io.Writer, asJSON bool, list []dps.DeviceRegistrationState) error {
	if asJSON {
		return writeJSON(w, nonNil(list))
	}
	rows := make([][]string, 0, len(list))
	for _, r := range list {
		code := ""
		if r.ErrorCode != 0 {
			code = strconv.Itoa(r.ErrorCode)
		}
		rows = append(rows, []string{r.RegistrationID, r.Status, r.AssignedHub, r.DeviceID, code,
			timeString(r.LastUpdatedDateTimeUTC), r.ETag})
	}
	return table(w, []string{"REGISTRATION ID", "STATUS", "ASSIGNED HUB", "DEVICE ID", "ERROR", "LAST UPDATED", "ETAG"}, rows)
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
