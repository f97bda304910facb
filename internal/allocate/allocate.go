package allocate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
)

// HubLister lists the linked hubs; *linkedhub.Registry is one.
type HubLister interface {
	List(ctx context.Context) ([]*linkedhub.Hub, error)
}

// Options configure an Allocator.
type Options struct {
	// Hubs lists the linked hubs, read on every allocation so that hubs
	// linked or changed on any node count at once. Required.
	Hubs HubLister
	// DefaultPolicy applies to enrollments that set no allocationPolicy:
	// dps.AllocationHashed (when empty), dps.AllocationGeoLatency or
	// dps.AllocationStatic. Custom cannot be the default, as in Azure.
	DefaultPolicy string
	// Networks drive geoLatency; see NetworkLocation. Without them
	// geoLatency behaves as hashed.
	Networks []NetworkLocation
	// Webhook calls custom allocation webhooks; nil gives one built with
	// zero WebhookOptions (system roots, Azure's retry schedule, no audit).
	Webhook *Webhook
	// Policies holds the in-process allocation policies that
	// customAllocationDefinition.webhookUrl "policy:NAME" selects; nil
	// makes every such enrollment fail to allocate (400207).
	Policies *allocpolicy.Registry
	// Health says how each linked hub is (*hubhealth.Checker); nil means
	// nothing is known and every hub counts as healthy.
	Health HealthSource
	// SkipUnhealthy makes hashed and geoLatency allocation leave out
	// candidates Health calls unhealthy, as long as one candidate is not.
	SkipUnhealthy bool
	Logger        *slog.Logger
}

// HealthSource tells a linked hub's health; *hubhealth.Checker is one.
type HealthSource interface {
	Health(host string) admin.LinkedHubHealth
}

// Allocator implements provision.Allocator over linked hubs. It is safe for
// concurrent use.
type Allocator struct {
	hubs          HubLister
	defaultPolicy string
	geo           *geoMap
	webhook       *Webhook
	policies      *allocpolicy.Registry
	health        HealthSource
	skipUnhealthy bool
	log           *slog.Logger
}

var _ provision.Allocator = (*Allocator)(nil)

// New returns an allocator.
func New(opt Options) (*Allocator, error) {
	if opt.Hubs == nil {
		return nil, errors.New("allocate: Options.Hubs is required")
	}
	def := dps.AllocationHashed
	if opt.DefaultPolicy != "" {
		def = canonicalPolicy(opt.DefaultPolicy)
		if def != dps.AllocationHashed && def != dps.AllocationGeoLatency && def != dps.AllocationStatic {
			return nil, fmt.Errorf("allocate: default allocation policy %q is not hashed, geoLatency or static", opt.DefaultPolicy)
		}
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	wh := opt.Webhook
	if wh == nil {
		var err error
		if wh, err = NewWebhook(WebhookOptions{Logger: opt.Logger}); err != nil {
			return nil, err
		}
	}
	return &Allocator{
		hubs:          opt.Hubs,
		defaultPolicy: def,
		geo:           newGeoMap(opt.Networks),
		webhook:       wh,
		policies:      opt.Policies,
		health:        opt.Health,
		skipUnhealthy: opt.SkipUnhealthy,
		log:           opt.Logger,
	}, nil
}

// Allocate implements provision.Allocator.
func (a *Allocator) Allocate(ctx context.Context, in *provision.AllocationInput) (*provision.Allocation, error) {
	policy, _, _, _, _ := in.Policy()
	if policy == "" {
		policy = a.defaultPolicy
	}
	policy = canonicalPolicy(policy)
	cands, err := a.Candidates(ctx, in)
	var derr *dps.Error
	if errors.As(err, &derr) {
		a.recordWhy(ctx, in, policy, nil, nil, nil, derr.Message, derr)
	}
	if err != nil {
		return nil, err
	}
	var (
		hub    *linkedhub.Hub
		reason string
	)
	if policy == dps.AllocationCustom {
		// The webhook or policy decides, among every candidate, as in
		// Azure; the log still shows each candidate's health.
		return a.custom(ctx, in, cands)
	}
	all := cands
	var healthNote string
	if policy == dps.AllocationHashed || policy == dps.AllocationGeoLatency {
		cands, healthNote = a.healthy(cands)
	}
	switch policy {
	case dps.AllocationStatic:
		if len(cands) != 1 {
			derr = dps.Errorf(dps.CodeNoHubForAllocation, "Static allocation needs exactly one IoT hub; %d are candidates (%s).", len(cands), names(cands))
			break
		}
		hub, reason = cands[0], "static: the one hub the enrollment names"
	case dps.AllocationHashed:
		hub = Hashed(in.RegistrationID, cands)
		reason = hashedReason(in, cands, hub)
	case dps.AllocationGeoLatency:
		hub = a.geo.pick(in.RegistrationID, in.RemoteAddr, cands)
		reason = a.geo.reason(in, cands, hub)
	default:
		derr = dps.Errorf(dps.CodeNoHubForAllocation, "The allocation policy %q is not supported.", policy)
	}
	if derr == nil && hub == nil {
		derr = dps.Errorf(dps.CodeNoHubForAllocation, "No linked IoT hub is available for allocation: link a hub with applyAllocationPolicy true, or name hubs in the enrollment.")
	}
	if p := in.Previous; p != nil && hub != nil && len(cands) == 1 && strings.EqualFold(p.AssignedHub, hub.Name) {
		if _, _, _, _, rp := in.Policy(); !rp.UpdateHubAssignment {
			reason = "the reprovision policy never moves the device: its current hub is the only candidate"
		}
	}
	if healthNote != "" {
		reason = healthNote + "; " + reason
	}
	if derr != nil {
		a.recordWhy(ctx, in, policy, all, cands, nil, derr.Message, derr)
		return nil, derr
	}
	a.log.Debug("allocated", "registrationId", in.RegistrationID, "policy", policy, "hub", hub.Name, "candidates", len(cands))
	return &provision.Allocation{Hub: hub.Name, Note: a.whyNote(in, policy, all, cands, hub, reason)}, nil
}

// healthy returns the candidates allocation may choose among, given their
// health: all of them unless the allocator skips unhealthy hubs, in which
// case those are left out, except when every candidate is unhealthy. A
// probe can be wrong (the checking path broken, the hub fine), and a
// device given a hub that may be down is better off than one refused for
// certain, so then all of them stay. note says what was done, for the
// allocation log ("" when nothing was left out and nothing is unhealthy).
func (a *Allocator) healthy(cands []*linkedhub.Hub) (out []*linkedhub.Hub, note string) {
	if a.health == nil {
		return cands, ""
	}
	var bad []string
	for _, h := range cands {
		if a.health.Health(h.Name).State == admin.HubHealthUnhealthy {
			bad = append(bad, h.Name)
			continue
		}
		out = append(out, h)
	}
	switch {
	case len(bad) == 0:
		return cands, ""
	case !a.skipUnhealthy:
		return cands, fmt.Sprintf("unhealthy candidates kept, since skipping them is off (--allocation-skip-unhealthy=false): %s", strings.Join(bad, ", "))
	case len(out) == 0:
		a.log.Warn("every candidate hub is unhealthy; allocating among all of them", "hubs", bad)
		return cands, fmt.Sprintf("every candidate is unhealthy (%s), so all of them stay candidates", strings.Join(bad, ", "))
	}
	return out, fmt.Sprintf("skipped as unhealthy: %s", strings.Join(bad, ", "))
}

// Candidates returns the hubs the device may be assigned to (see the
// package documentation), in the order the enrollment names them or by
// name. Hubs the enrollment names that are not linked are left out; if that
// leaves none, it fails with dps.CodeIoTHubNotLinked.
func (a *Allocator) Candidates(ctx context.Context, in *provision.AllocationInput) ([]*linkedhub.Hub, error) {
	linked, err := a.hubs.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
	cands, err := a.candidates(in, linked)
	var derr *dps.Error
	if f, ok := a.hubs.(freshLister); ok && (errors.As(err, &derr) || err == nil && len(cands) == 0) {
		// A list kept for a moment may predate a hub linked on another
		// node, whose change notice has not arrived yet: before a device
		// is refused for want of a hub, read the list afresh.
		if linked, err = f.ListFresh(ctx, 0); err != nil {
			return nil, fmt.Errorf("allocate: %w", err)
		}
		return a.candidates(in, linked)
	}
	return cands, err
}

// freshLister is a HubLister that keeps its list for a while;
// ListFresh(ctx, 0) reads it again.
type freshLister interface {
	ListFresh(ctx context.Context, maxAge time.Duration) ([]*linkedhub.Hub, error)
}

// candidates is Candidates over the linked hubs linked.
func (a *Allocator) candidates(in *provision.AllocationInput, linked []*linkedhub.Hub) ([]*linkedhub.Hub, error) {
	_, named, legacy, _, rp := in.Policy()
	byName := make(map[string]*linkedhub.Hub, len(linked))
	for _, h := range linked {
		byName[strings.ToLower(h.Name)] = h
	}

	if p := in.Previous; p != nil && !rp.UpdateHubAssignment && p.AssignedHub != "" {
		// "Never reprovision": only the current hub, linked or not any more
		// (the device already has its identity there).
		if h, ok := byName[strings.ToLower(p.AssignedHub)]; ok {
			return []*linkedhub.Hub{h}, nil
		}
		return []*linkedhub.Hub{{Name: p.AssignedHub, AllocationWeight: linkedhub.DefaultWeight}}, nil
	}

	if len(named) == 0 && legacy != "" {
		named = []string{legacy}
	}
	if len(named) == 0 {
		var out []*linkedhub.Hub
		for _, h := range linked {
			if h.ApplyAllocationPolicy {
				out = append(out, h)
			}
		}
		return out, nil
	}
	var out []*linkedhub.Hub
	var missing []string
	for _, n := range named {
		h, ok := byName[strings.ToLower(strings.TrimSpace(n))]
		switch {
		case !ok:
			missing = append(missing, n)
		case !slices.Contains(out, h):
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		return nil, dps.Errorf(dps.CodeIoTHubNotLinked, "The IoT hubs the enrollment names (%s) are not linked to this provisioning service.", strings.Join(missing, ", "))
	}
	if len(missing) > 0 {
		a.log.Warn("enrollment names IoT hubs that are not linked; they are skipped", "registrationId", in.RegistrationID, "hubs", missing)
	}
	return out, nil
}

// canonicalPolicy spells a policy as the dps constants do; the enroll
// package already does this for stored enrollments, but a configured
// default may come from a flag ("GeoLatency" in ARM spelling).
func canonicalPolicy(p string) string {
	for _, c := range []string{dps.AllocationHashed, dps.AllocationGeoLatency, dps.AllocationStatic, dps.AllocationCustom} {
		if strings.EqualFold(p, c) {
			return c
		}
	}
	return p
}

func names(hubs []*linkedhub.Hub) string {
	if len(hubs) == 0 {
		return "none"
	}
	s := make([]string, len(hubs))
	for i, h := range hubs {
		s[i] = h.Name
	}
	return strings.Join(s, ", ")
}
