package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v2"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
)

// fleetAPIVersion names the format of "dpsd export" and "dpsd apply" files.
const fleetAPIVersion = "dpsd/v1"

// fleet is the declarative state "dpsd apply" makes a service match and
// "dpsd export" writes: the members are the service API's JSON shapes, so
// what "-o json" prints can be pasted in.
type fleet struct {
	APIVersion       string                     `json:"apiVersion"`
	Kind             string                     `json:"kind"`
	Enrollments      []dps.IndividualEnrollment `json:"enrollments,omitempty"`
	EnrollmentGroups []dps.EnrollmentGroup      `json:"enrollmentGroups,omitempty"`
	LinkedHubs       []fleetHub                 `json:"linkedHubs,omitempty"`
	BuiltinHubs      []fleetBuiltinHub          `json:"builtinHubs,omitempty"`

	// raw holds each item as the file gives it (member name → value), so
	// that apply compares and changes only the members the file names,
	// leaving the service's defaults and keys alone.
	raw map[string][]map[string]any
}

// fleetHub is a linked hub as a fleet file declares it.
type fleetHub struct {
	Name string `json:"name"`
	// ConnectionString links a hub the service lacks; the service never
	// shows it, so export leaves it out.
	ConnectionString      string `json:"connectionString,omitempty"`
	AllocationWeight      int    `json:"allocationWeight"`
	ApplyAllocationPolicy bool   `json:"applyAllocationPolicy"`
	Location              string `json:"location,omitempty"`
}

// fleetBuiltinHub is a built-in hub as a fleet file declares it. Its keys
// are its own: a hub created by apply has new ones, and a linked hub that
// names it is linked with them.
type fleetBuiltinHub struct {
	Name     string `json:"name"`
	HostName string `json:"hostName,omitempty"`
	// Address is the hub's own listening address; empty for a hub on the
	// node's shared endpoint.
	Address string `json:"address,omitempty"`
}

// normalizeEnrollment leaves what a user declares: no etag, times or
// registration state, and keys only when asked.
func normalizeEnrollment(e *dps.IndividualEnrollment, keys bool) {
	e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC, e.RegistrationState = "", nil, nil, nil
	normalizeAttestation(e.Attestation, keys)
}

func normalizeGroup(g *dps.EnrollmentGroup, keys bool) {
	g.ETag, g.CreatedDateTimeUTC, g.LastUpdatedDateTimeUTC = "", nil, nil
	normalizeAttestation(g.Attestation, keys)
}

func normalizeAttestation(a *dps.AttestationMechanism, keys bool) {
	if a == nil {
		return
	}
	if !keys && a.SymmetricKey != nil {
		a.SymmetricKey = nil
	}
	// A certificate's info is read from it; the file keeps the
	// certificate alone.
	if x := a.X509; x != nil {
		for _, cs := range []*dps.X509Certificates{x.ClientCertificates, x.SigningCertificates} {
			if cs == nil {
				continue
			}
			for _, c := range []*dps.X509CertificateWithInfo{cs.Primary, cs.Secondary} {
				if c != nil && c.Certificate != "" {
					c.Info = nil
				}
			}
		}
	}
}

// hasX509 reports whether a has X.509 certificates (not CA references),
// which the query shows only the info of.
func hasX509(a *dps.AttestationMechanism) bool {
	return a != nil && a.X509 != nil && (a.X509.ClientCertificates != nil || a.X509.SigningCertificates != nil)
}

// readFleet reads a fleet file (YAML or JSON; "-" is standard input).
func readFleet(path string, stdin io.Reader) (*fleet, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 64<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	j, err := json.Marshal(jsonValue(doc))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	var f fleet
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.APIVersion != fleetAPIVersion || f.Kind != "Fleet" {
		return nil, fmt.Errorf("%s: apiVersion %q kind %q: want %s Fleet", path, f.APIVersion, f.Kind, fleetAPIVersion)
	}
	f.raw = map[string][]map[string]any{}
	if m, ok := jsonValue(doc).(map[string]any); ok {
		for _, list := range []string{"enrollments", "enrollmentGroups", "linkedHubs", "builtinHubs"} {
			items, _ := m[list].([]any)
			for _, it := range items {
				// Through JSON, so numbers compare as the service's do.
				obj, _ := jsonOf(it).(map[string]any)
				f.raw[list] = append(f.raw[list], obj)
			}
		}
	}
	return &f, nil
}

// covers reports whether have holds every member want names, with the
// same value (objects compared member by member the same way).
func covers(want, have any) bool {
	wm, ok := want.(map[string]any)
	if !ok {
		return reflect.DeepEqual(want, have)
	}
	hm, _ := have.(map[string]any)
	for k, v := range wm {
		if !covers(v, hm[k]) {
			return false
		}
	}
	return true
}

// overlay returns base with the members of top written over it (objects
// merged member by member).
func overlay(base, top any) any {
	tm, ok := top.(map[string]any)
	if !ok {
		return top
	}
	bm, ok := base.(map[string]any)
	if !ok {
		return top
	}
	out := make(map[string]any, len(bm))
	for k, v := range bm {
		out[k] = v
	}
	for k, v := range tm {
		out[k] = overlay(bm[k], v)
	}
	return out
}

// merged decodes the current item (with keys) overlaid with the file's
// members into dst.
func merged(cur any, raw map[string]any, dst any) error {
	b, err := json.Marshal(overlay(jsonOf(cur), raw))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, dst)
}

// jsonValue turns what YAML decodes (maps keyed by any) into what JSON
// encodes.
func jsonValue(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonValue(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonValue(e)
		}
	}
	return v
}

// writeFleet writes f as YAML in the service API's member names, keys
// sorted, so two exports of the same state are identical.
func writeFleet(w io.Writer, f *fleet) error {
	j, err := json.Marshal(f)
	if err != nil {
		return err
	}
	var doc any
	if err := json.Unmarshal(j, &doc); err != nil {
		return err
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

// exportFleet reads the service's state.
func exportFleet(ctx context.Context, c *service.Client, keys bool) (*fleet, error) {
	f := &fleet{APIVersion: fleetAPIVersion, Kind: "Fleet"}
	var err error
	if f.Enrollments, err = collect(ctx, 0, func(ctx context.Context, o service.QueryOptions) (*service.Page[dps.IndividualEnrollment], error) {
		return c.QueryEnrollments(ctx, o)
	}); err != nil {
		return nil, err
	}
	if f.EnrollmentGroups, err = collect(ctx, 0, func(ctx context.Context, o service.QueryOptions) (*service.Page[dps.EnrollmentGroup], error) {
		return c.QueryEnrollmentGroups(ctx, o)
	}); err != nil {
		return nil, err
	}
	for i := range f.Enrollments {
		e := &f.Enrollments[i]
		switch {
		case keys && e.Attestation != nil && e.Attestation.Type == dps.AttestationSymmetricKey:
			if e.Attestation, err = c.GetEnrollmentAttestation(ctx, e.RegistrationID); err != nil {
				return nil, err
			}
		case hasX509(e.Attestation):
			if e.Attestation, err = c.GetEnrollmentAttestationWithCertificates(ctx, e.RegistrationID); err != nil {
				return nil, err
			}
		}
		normalizeEnrollment(e, keys)
	}
	for i := range f.EnrollmentGroups {
		g := &f.EnrollmentGroups[i]
		switch {
		case keys && g.Attestation != nil && g.Attestation.Type == dps.AttestationSymmetricKey:
			if g.Attestation, err = c.GetEnrollmentGroupAttestation(ctx, g.EnrollmentGroupID); err != nil {
				return nil, err
			}
		case hasX509(g.Attestation):
			if g.Attestation, err = c.GetEnrollmentGroupAttestationWithCertificates(ctx, g.EnrollmentGroupID); err != nil {
				return nil, err
			}
		}
		normalizeGroup(g, keys)
	}
	hubs, err := builtinhub.AdminClientFor(c).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list built-in hubs: %w", err)
	}
	for _, h := range hubs {
		bh := fleetBuiltinHub{Name: h.Name, HostName: h.HostName}
		if !h.Shared {
			bh.Address = h.Address
		}
		f.BuiltinHubs = append(f.BuiltinHubs, bh)
	}
	slices.SortFunc(f.BuiltinHubs, func(a, b fleetBuiltinHub) int { return strings.Compare(a.Name, b.Name) })
	var linked []admin.LinkedHub
	if err := c.Do(ctx, http.MethodGet, linkedHubsPath, nil, nil, &linked, ""); err != nil {
		return nil, fmt.Errorf("list linked hubs: %w", err)
	}
	for _, h := range linked {
		// The service never shows the key: a connection string is only
		// given, never exported or compared.
		f.LinkedHubs = append(f.LinkedHubs, fleetHub{Name: h.Name, AllocationWeight: h.AllocationWeight,
			ApplyAllocationPolicy: h.ApplyAllocationPolicy, Location: h.Location})
	}
	slices.SortFunc(f.LinkedHubs, func(a, b fleetHub) int { return strings.Compare(a.Name, b.Name) })
	return f, nil
}

func newExportCmd() *cobra.Command {
	var keys bool
	var file string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the enrollments, enrollment groups and linked hubs as a file for dpsd apply",
		Long: `Write the service's individual enrollments, enrollment groups and linked hubs
as YAML, in the service API's member names, for "dpsd apply -f". Symmetric keys
are left out unless --include-keys (apply then keeps the keys a service has,
or lets a new one generate them). Linked hubs' connection strings are never
shown by the service: add them to the file to link hubs on another service.`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&keys, "include-keys", false, "include the symmetric keys of enrollments and groups")
	cmd.Flags().StringVarP(&file, "file", "f", "-", "file to write (- for standard output)")
	cf := addConnectFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := cf.client()
		if err != nil {
			return err
		}
		f, err := exportFleet(cmd.Context(), c, keys)
		if err != nil {
			return err
		}
		if file == "-" {
			return writeFleet(cmd.OutOrStdout(), f)
		}
		var b bytes.Buffer
		if err := writeFleet(&b, f); err != nil {
			return err
		}
		return os.WriteFile(file, b.Bytes(), 0o600)
	}
	return cmd
}

// change is one step of an apply.
type change struct {
	verb, what, id string
	do             func(context.Context) error
}

func newApplyCmd() *cobra.Command {
	var file string
	var dryRun, prune bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create, update (and with --prune delete) enrollments, groups and linked hubs to match a file",
		Long: `Make the service match a file written by "dpsd export" (or by hand, in the
same format): create what the file names and the service lacks, update what
differs, and with --prune delete what the file no longer names. Only the
members an item names are compared and changed; the others keep their
current values (or the service's defaults, for new items), keys included.
Applying the same file twice changes nothing; --dry-run prints the changes
without making them. A linked hub the service lacks needs its
connectionString in the file, which only links it: rotate a linked hub's
key with "dpsd linked-hub update --connection-string".`,
		Example: `  dpsd export > fleet.yaml
  dpsd apply -f fleet.yaml --dry-run
  dpsd apply -f fleet.yaml --prune`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the fleet file (YAML or JSON; - for standard input)")
	_ = cmd.MarkFlagRequired("file")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the changes, make none")
	cmd.Flags().BoolVar(&prune, "prune", false, "also delete enrollments, groups and linked hubs the file does not name")
	cf := addConnectFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		want, err := readFleet(file, cmd.InOrStdin())
		if err != nil {
			return err
		}
		c, err := cf.client()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		changes, err := plan(ctx, c, want, prune)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if len(changes) == 0 {
			_, err := fmt.Fprintln(w, "No changes: the service matches the file.")
			return err
		}
		for i, ch := range changes {
			prefix := ""
			if dryRun {
				prefix = "(dry run) "
			}
			fmt.Fprintf(w, "%s[%d/%d] %s %s %s\n", prefix, i+1, len(changes), ch.verb, ch.what, ch.id)
			if dryRun {
				continue
			}
			if err := ch.do(ctx); err != nil {
				return fmt.Errorf("%s %s %s: %w", ch.verb, ch.what, ch.id, err)
			}
		}
		return nil
	}
	return cmd
}

// plan compares the file with the service and lists the changes, creations
// and updates in the file's order, deletions last.
func plan(ctx context.Context, c *service.Client, want *fleet, prune bool) ([]change, error) {
	// With keys when the file gives any, so that equal keys compare equal.
	have, err := exportFleet(ctx, c, want.givesKeys())
	if err != nil {
		return nil, err
	}
	var changes []change
	seen := map[string]bool{}

	// Built-in hubs first: a linked hub may name one.
	hubAdmin := builtinhub.AdminClientFor(c)
	haveB := map[string]fleetBuiltinHub{}
	builtinHost := map[string]string{} // lower-cased host name → hub name, of the service's hubs and the file's
	for _, h := range have.BuiltinHubs {
		haveB[strings.ToLower(h.Name)] = h
		builtinHost[strings.ToLower(h.HostName)] = h.Name
	}
	for i, h := range want.BuiltinHubs {
		id := strings.ToLower(h.Name)
		if h.Name == "" {
			return nil, errors.New("a built-in hub without a name")
		}
		if seen["b/"+id] {
			return nil, fmt.Errorf("built-in hub %s is named twice", h.Name)
		}
		seen["b/"+id] = true
		cur, ok := haveB[id]
		if !ok {
			if h.HostName != "" {
				builtinHost[strings.ToLower(h.HostName)] = h.Name
			} else {
				builtinHost[strings.ToLower(h.Name+"."+builtinhub.DefaultDomain)] = h.Name
			}
			changes = append(changes, change{"create", "built-in hub", h.Name, func(ctx context.Context) error {
				_, err := hubAdmin.Create(ctx, h.Name, builtinhub.CreateRequest{HostName: h.HostName, Address: h.Address})
				return err
			}})
			continue
		}
		if !covers(want.rawItem("builtinHubs", i), jsonOf(cur)) {
			return nil, fmt.Errorf("built-in hub %s: its host name or address differ from the file's (%s, %q), which apply does not change: delete the hub and apply again",
				h.Name, cur.HostName, cur.Address)
		}
	}

	haveE := map[string]dps.IndividualEnrollment{}
	for _, e := range have.Enrollments {
		haveE[strings.ToLower(e.RegistrationID)] = e
	}
	for i, e := range want.Enrollments {
		id := strings.ToLower(e.RegistrationID)
		if seen["e/"+id] {
			return nil, fmt.Errorf("enrollment %s is named twice", e.RegistrationID)
		}
		seen["e/"+id] = true
		cur, ok := haveE[id]
		if !ok {
			changes = append(changes, change{"create", "enrollment", e.RegistrationID, func(ctx context.Context) error {
				_, err := c.CreateEnrollment(ctx, &e)
				return err
			}})
			continue
		}
		raw := want.rawItem("enrollments", i)
		if covers(raw, jsonOf(cur)) {
			continue
		}
		changes = append(changes, change{"update", "enrollment", e.RegistrationID, func(ctx context.Context) error {
			full, err := c.GetEnrollment(ctx, e.RegistrationID)
			if err != nil {
				return err
			}
			if full.Attestation, err = c.GetEnrollmentAttestation(ctx, e.RegistrationID); err != nil {
				return err
			}
			full.RegistrationState = nil
			var next dps.IndividualEnrollment
			if err := merged(full, raw, &next); err != nil {
				return err
			}
			_, err = c.UpdateEnrollment(ctx, &next) // guarded by the etag just read
			return err
		}})
	}

	haveG := map[string]dps.EnrollmentGroup{}
	for _, g := range have.EnrollmentGroups {
		haveG[strings.ToLower(g.EnrollmentGroupID)] = g
	}
	for i, g := range want.EnrollmentGroups {
		id := strings.ToLower(g.EnrollmentGroupID)
		if seen["g/"+id] {
			return nil, fmt.Errorf("enrollment group %s is named twice", g.EnrollmentGroupID)
		}
		seen["g/"+id] = true
		cur, ok := haveG[id]
		if !ok {
			changes = append(changes, change{"create", "enrollment group", g.EnrollmentGroupID, func(ctx context.Context) error {
				_, err := c.CreateEnrollmentGroup(ctx, &g)
				return err
			}})
			continue
		}
		raw := want.rawItem("enrollmentGroups", i)
		if covers(raw, jsonOf(cur)) {
			continue
		}
		changes = append(changes, change{"update", "enrollment group", g.EnrollmentGroupID, func(ctx context.Context) error {
			full, err := c.GetEnrollmentGroup(ctx, g.EnrollmentGroupID)
			if err != nil {
				return err
			}
			if full.Attestation, err = c.GetEnrollmentGroupAttestation(ctx, g.EnrollmentGroupID); err != nil {
				return err
			}
			var next dps.EnrollmentGroup
			if err := merged(full, raw, &next); err != nil {
				return err
			}
			_, err = c.UpdateEnrollmentGroup(ctx, &next)
			return err
		}})
	}

	haveH := map[string]fleetHub{}
	for _, h := range have.LinkedHubs {
		haveH[strings.ToLower(h.Name)] = h
	}
	for i, h := range want.LinkedHubs {
		id := strings.ToLower(h.Name)
		if h.Name == "" {
			return nil, errors.New("a linked hub without a name")
		}
		seen["h/"+id] = true
		raw := want.rawItem("linkedHubs", i)
		// Only the members the file names are sent: the others keep their
		// defaults (on link) or current values (on update).
		var def admin.LinkedHubDefinition
		if err := merged(nil, raw, &def); err != nil {
			return nil, fmt.Errorf("linked hub %s: %w", h.Name, err)
		}
		def.Name = ""
		cur, ok := haveH[id]
		if !ok {
			hubName, builtin := builtinHost[id]
			if h.ConnectionString == "" && !builtin {
				return nil, fmt.Errorf("linked hub %s is not linked, and the file gives no connectionString to link it (nor is it a built-in hub's host name)", h.Name)
			}
			changes = append(changes, change{"link", "hub", h.Name, func(ctx context.Context) error {
				if def.ConnectionString == "" {
					// A built-in hub, linked with its own keys.
					info, err := hubAdmin.Show(ctx, hubName)
					if err != nil {
						return err
					}
					def.ConnectionString = info.ConnectionString
				}
				return c.Do(ctx, http.MethodPost, linkedHubsPath, nil, def, nil, "")
			}})
			continue
		}
		cmpRaw := overlay(raw, map[string]any{})
		delete(cmpRaw.(map[string]any), "connectionString")
		// A connection string only links: the service never shows the key
		// to compare, so a key is rotated with "dpsd linked-hub update".
		if covers(cmpRaw, jsonOf(cur)) {
			continue
		}
		def.ConnectionString = ""
		changes = append(changes, change{"update", "linked hub", h.Name, func(ctx context.Context) error {
			return c.Do(ctx, http.MethodPatch, linkedHubsPath+"/"+url.PathEscape(h.Name), nil, def, nil, "")
		}})
	}

	if prune {
		for _, e := range have.Enrollments {
			if !seen["e/"+strings.ToLower(e.RegistrationID)] {
				id := e.RegistrationID
				changes = append(changes, change{"delete", "enrollment", id, func(ctx context.Context) error { return c.DeleteEnrollment(ctx, id, "") }})
			}
		}
		for _, g := range have.EnrollmentGroups {
			if !seen["g/"+strings.ToLower(g.EnrollmentGroupID)] {
				id := g.EnrollmentGroupID
				changes = append(changes, change{"delete", "enrollment group", id, func(ctx context.Context) error { return c.DeleteEnrollmentGroup(ctx, id, "") }})
			}
		}
		for _, h := range have.LinkedHubs {
			if !seen["h/"+strings.ToLower(h.Name)] {
				name := h.Name
				changes = append(changes, change{"unlink", "hub", name, func(ctx context.Context) error {
					return c.Do(ctx, http.MethodDelete, linkedHubsPath+"/"+url.PathEscape(name), nil, nil, nil, "")
				}})
			}
		}
		for _, h := range have.BuiltinHubs {
			if !seen["b/"+strings.ToLower(h.Name)] {
				name := h.Name
				changes = append(changes, change{"delete", "built-in hub", name, func(ctx context.Context) error { return hubAdmin.Delete(ctx, name) }})
			}
		}
	}
	return changes, nil
}

// jsonOf is v's JSON form as generic values, for comparing what the file
// says with what the service has (omitted members and empty ones alike).
func jsonOf(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// rawItem is item i of a list as the file gives it; for a fleet built in
// code, its JSON form.
func (f *fleet) rawItem(list string, i int) map[string]any {
	if f.raw != nil && i < len(f.raw[list]) && f.raw[list][i] != nil {
		return f.raw[list][i]
	}
	var v any
	switch list {
	case "enrollments":
		v = f.Enrollments[i]
	case "enrollmentGroups":
		v = f.EnrollmentGroups[i]
	case "builtinHubs":
		v = f.BuiltinHubs[i]
	default:
		v = f.LinkedHubs[i]
	}
	m, _ := jsonOf(v).(map[string]any)
	return m
}

// givesKeys reports whether an enrollment or group of the file gives
// symmetric keys.
func (f *fleet) givesKeys() bool {
	for _, e := range f.Enrollments {
		if a := e.Attestation; a != nil && a.SymmetricKey != nil {
			return true
		}
	}
	for _, g := range f.EnrollmentGroups {
		if a := g.Attestation; a != nil && a.SymmetricKey != nil {
			return true
		}
	}
	return false
}
