package allocate

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
)

// describe fills what every allocation log entry says about an
// allocation: its policy, its candidates, and what reprovisioning does
// when the device already has a hub (hub is the one chosen, "" if none).
func describe(e *alloclog.Entry, in *provision.AllocationInput, policy string, cands []*linkedhub.Hub, hub string) {
	e.AllocationPolicy = policy
	e.Candidates = make([]admin.AllocationCandidate, 0, len(cands))
	for _, h := range cands {
		e.Candidates = append(e.Candidates, admin.AllocationCandidate{
			Name: h.Name, AllocationWeight: h.AllocationWeight, Location: h.Location, ApplyAllocationPolicy: h.ApplyAllocationPolicy,
		})
	}
	p := in.Previous
	if p == nil || p.AssignedHub == "" {
		return
	}
	_, _, _, _, rp := in.Policy()
	e.PreviousHub = p.AssignedHub
	data := "twin reset to the enrollment's initial twin (reprovisionAndResetData)"
	if rp.MigrateDeviceData {
		data = "twin and device data migrated (reprovisionAndMigrateData)"
	}
	switch {
	case !rp.UpdateHubAssignment:
		e.Reprovision = "never reprovision: the device stays in " + p.AssignedHub + " with its twin"
	case hub == "":
		e.Reprovision = "no new hub: the device keeps its registration in " + p.AssignedHub
	case strings.EqualFold(hub, p.AssignedHub):
		e.Reprovision = "stays in " + p.AssignedHub + "; " + data
	default:
		e.Reprovision = "moves from " + p.AssignedHub + " to " + hub + "; " + data
	}
}

// recordWhy writes, for an allocation that calls nothing and failed, what
// it chose among and why it failed.
func (a *Allocator) recordWhy(ctx context.Context, in *provision.AllocationInput, policy string, cands []*linkedhub.Hub, hub *linkedhub.Hub, reason string, derr *dps.Error) {
	if log := a.webhook.opt.Audit; log != nil {
		log.Record(ctx, whyEntry(in, policy, cands, hub, reason, derr))
	}
}

// whyNote is, for an allocation that calls nothing and chose hub, what it
// chose among and why, for the engine to keep with the registration.
func (a *Allocator) whyNote(in *provision.AllocationInput, policy string, cands []*linkedhub.Hub, hub *linkedhub.Hub, reason string) provision.Note {
	log := a.webhook.opt.Audit
	if log == nil {
		return nil
	}
	return log.Pending(whyEntry(in, policy, cands, hub, reason, nil))
}

func whyEntry(in *provision.AllocationInput, policy string, cands []*linkedhub.Hub, hub *linkedhub.Hub, reason string, derr *dps.Error) alloclog.Entry {
	e := alloclog.Entry{RegistrationID: in.RegistrationID, Reason: reason}
	name := ""
	if hub != nil {
		name = hub.Name
	}
	describe(&e, in, policy, cands, name)
	if derr != nil {
		e.Outcome, e.ErrorCode, e.ErrorMessage = alloclog.OutcomeFailed, derr.ErrorCode, derr.Message
	} else {
		e.Outcome, e.Hub = alloclog.OutcomeAssigned, name
	}
	return e
}

// hashedReason explains a hashed choice.
func hashedReason(in *provision.AllocationInput, cands []*linkedhub.Hub, hub *linkedhub.Hub) string {
	if hub == nil {
		return "no candidate hub"
	}
	if len(cands) == 1 {
		return "hashed: " + hub.Name + " is the only candidate"
	}
	key := strings.ToLower(in.RegistrationID)
	var scores []string
	for _, h := range cands {
		scores = append(scores, fmt.Sprintf("%s weight %d score %s", h.Name, h.AllocationWeight,
			strconv.FormatFloat(score(key, strings.ToLower(h.Name), h.AllocationWeight), 'g', 4, 64)))
	}
	return fmt.Sprintf("hashed: weighted rendezvous hashing of the registration id over %d candidates (%s); %s scored highest",
		len(cands), strings.Join(scores, ", "), hub.Name)
}

// geoReason explains a geoLatency choice.
func (m *geoMap) reason(in *provision.AllocationInput, cands []*linkedhub.Hub, hub *linkedhub.Hub) string {
	locs := m.locations(in.RemoteAddr)
	if len(locs) == 0 {
		return fmt.Sprintf("geoLatency: no configured network (--geo-networks) contains the device's address %s, so hashed over every candidate: %s", in.RemoteAddr, hashedReason(in, cands, hub))
	}
	for _, loc := range locs {
		var near []*linkedhub.Hub
		for _, h := range cands {
			if h.Location != "" && strings.EqualFold(h.Location, loc) {
				near = append(near, h)
			}
		}
		if len(near) > 0 {
			return fmt.Sprintf("geoLatency: the device's address %s is in a network whose locations are, nearest first, %s; %d candidates are in %s: %s",
				in.RemoteAddr, strings.Join(locs, ", "), len(near), loc, hashedReason(in, near, hub))
		}
	}
	return fmt.Sprintf("geoLatency: no candidate is in the device's locations (%s), so hashed over every candidate: %s", strings.Join(locs, ", "), hashedReason(in, cands, hub))
}
