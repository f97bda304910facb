package allocate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

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
	Logger   *slog.Logger
}

// Allocator implements provision.Allocator over linked hubs. It is safe for
// concurrent use.
type Allocator struct {
	hubs          HubLister
	defaultPolicy string
	geo           *geoMap
	webhook       *Webhook
	policies      *allocpolicy.Registry
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
		a.recordWhy(ctx, in, policy, nil, nil, derr.Message, derr)
	}
	if err != nil {
		return nil, err
	}
	var (
		hub    *linkedhub.Hub
		reason string
	)
	switch policy {
	case dps.AllocationCustom:
		return a.custom(ctx, in, cands)
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
	if derr != nil {
		a.recordWhy(ctx, in, policy, cands, nil, derr.Message, derr)
		return nil, derr
	}
	a.log.Debug("allocated", "registrationId", in.RegistrationID, "policy", policy, "hub", hub.Name, "candidates", len(cands))
	return &provision.Allocation{Hub: hub.Name, Note: a.whyNote(in, policy, cands, hub, reason)}, nil
}

// Candidates returns the hubs the device may be assigned to (see the
// package documentation), in the order the enrollment names them or by
// name. Hubs the enrollment names that are not linked are left out; if that
// leaves none, it fails with dps.CodeIoTHubNotLinked.
func (a *Allocator) Candidates(ctx context.Context, in *provision.AllocationInput) ([]*linkedhub.Hub, error) {
	_, named, legacy, _, rp := in.Policy()
	linked, err := a.hubs.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
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
