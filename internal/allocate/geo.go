package allocate

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/dpsd/dpsd/internal/linkedhub"
)

// NetworkLocation says which hub locations are nearest to devices whose
// address is in Prefix, nearest first.
//
// This is what geoLatency means in dpsd. Azure routes a device to the hub
// with the lowest latency from the device's network, which a self-hosted
// service cannot measure from the device's side; measuring from dpsd to the
// hubs would only say which hub is near dpsd. So dpsd measures nothing: the
// operator states the geography once, as client networks → locations, and
// gives each linked hub a location. A device whose address falls in a
// configured prefix (the longest matching prefix wins) goes to the candidate
// hubs in the first of its locations that has any, by weighted hashing among
// them. A device outside every prefix, or whose locations hold no candidate
// hub, falls back to hashed allocation over all candidates.
type NetworkLocation struct {
	Prefix    netip.Prefix
	Locations []string
}

// ParseNetworkMap parses the command-line form of a network map:
// "PREFIX=LOC[,LOC...]" entries separated by ';' or newlines, for example
// "10.1.0.0/16=westeurope,northeurope; 10.2.0.0/16=eastus; ::/0=eastus".
// A bare address is a single-address prefix.
func ParseNetworkMap(s string) ([]NetworkLocation, error) {
	var out []NetworkLocation
	for entry := range strings.FieldsFuncSeq(s, func(r rune) bool { return r == ';' || r == '\n' }) {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		p, locs, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("network map entry %q: want PREFIX=LOCATION[,LOCATION...]", entry)
		}
		prefix, err := parsePrefix(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("network map entry %q: %w", entry, err)
		}
		nl := NetworkLocation{Prefix: prefix}
		for l := range strings.SplitSeq(locs, ",") {
			if l = strings.TrimSpace(l); l != "" {
				nl.Locations = append(nl.Locations, l)
			}
		}
		if len(nl.Locations) == 0 {
			return nil, fmt.Errorf("network map entry %q names no location", entry)
		}
		out = append(out, nl)
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// geoMap is a network map ordered for longest-prefix matching.
type geoMap struct {
	entries []NetworkLocation
}

func newGeoMap(nets []NetworkLocation) *geoMap {
	m := &geoMap{entries: slices.Clone(nets)}
	for i := range m.entries {
		// An IPv4 prefix written as ::ffff:a.b.c.d/n would never match an
		// unmapped device address; store it as plain IPv4.
		p := m.entries[i].Prefix
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			m.entries[i].Prefix = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
	}
	slices.SortStableFunc(m.entries, func(a, b NetworkLocation) int { return b.Prefix.Bits() - a.Prefix.Bits() })
	return m
}

// locations returns the locations configured for a device address, nearest
// first, or nil.
func (m *geoMap) locations(remoteAddr string) []string {
	addr, ok := deviceAddr(remoteAddr)
	if !ok {
		return nil
	}
	for _, e := range m.entries {
		if e.Prefix.Contains(addr) {
			return e.Locations
		}
	}
	return nil
}

// pick chooses among cands for a device at remoteAddr (see NetworkLocation).
func (m *geoMap) pick(registrationID, remoteAddr string, cands []*linkedhub.Hub) *linkedhub.Hub {
	for _, loc := range m.locations(remoteAddr) {
		var near []*linkedhub.Hub
		for _, h := range cands {
			if h.Location != "" && strings.EqualFold(h.Location, loc) {
				near = append(near, h)
			}
		}
		if len(near) > 0 {
			return Hashed(registrationID, near)
		}
	}
	return Hashed(registrationID, cands)
}

// deviceAddr parses "ip:port", "[ip]:port" or a bare IP.
func deviceAddr(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	}
	// A zone ("fe80::1%eth0") cannot match a configured prefix anyway.
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.WithZone("").Unmap(), true
}
